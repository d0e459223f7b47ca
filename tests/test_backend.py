"""Importing dgl_iflow on a fresh machine: DGL's PyTorch backend, chosen silently."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose home folder is ``home`` (no ~/.dgl config)."""
    environment = {key: value for key, value in os.environ.items() if key != "DGLBACKEND"}
    environment.update(HOME=str(home), PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, timeout=300)


def test_first_import_is_silent_and_writes_nothing(tmp_path):
    result = run_python("import dgl_iflow, dgl; print(dgl.backend.backend_name)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pytorch\n"
    assert result.stderr == "", "the import must not print DGL's backend banner"
    assert not (tmp_path / ".dgl").exists(), "the import must not write ~/.dgl/config.json"


def test_another_backend_is_refused_with_a_clear_error(tmp_path):
    result = run_python("import dgl_iflow", tmp_path, DGLBACKEND="mxnet")
    assert result.returncode != 0
    assert "ImportError: dgl_iflow needs DGL's PyTorch backend, but DGLBACKEND='mxnet'" in result.stderr
