"""Importing dgl_iflow on a fresh machine: DGL optional, imported only when a DGL graph is asked
for, on its PyTorch backend, silently."""
import os
import subprocess
import sys
from pathlib import Path

from graphs import requires_dgl

REPO = Path(__file__).resolve().parents[1]
# Makes `import dgl` fail in the child, as on a stack without DGL.
WITHOUT_DGL = "import sys; sys.modules['dgl'] = None; "


def run_python(code: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose home folder is ``home`` (no ~/.dgl config)."""
    environment = {key: value for key, value in os.environ.items() if key != "DGLBACKEND"}
    environment.update(HOME=str(home), PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, timeout=300)


def test_import_loads_neither_graph_package(tmp_path):
    result = run_python("import sys, dgl_iflow; print(sorted(m for m in ('dgl', 'torch_geometric') if m in sys.modules))",
                        tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n" and result.stderr == ""
    assert not (tmp_path / ".dgl").exists()


def test_without_dgl_data_sets_give_the_librarys_graph_and_dgl_calls_name_the_extra(tmp_path):
    code = WITHOUT_DGL + """
from dgl_iflow.data import load_dataset
from dgl_iflow.graphs import Graph, to_dgl
graph = load_dataset("three_node").graph
print(type(graph).__name__)
try:
    to_dgl(graph)
except ImportError as err:
    print(err)
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    kind, message = result.stdout.splitlines()
    assert kind == "Graph"
    assert "pip install 'dgl_iflow[dgl]'" in message


@requires_dgl
def test_first_dgl_use_is_silent_and_writes_nothing(tmp_path):
    code = "import dgl_iflow, dgl; from dgl_iflow.data import load_dataset; g = load_dataset('three_node').graph; " \
           "print(type(g).__name__, dgl.backend.backend_name)"
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "DGLGraph pytorch\n"
    assert result.stderr == "", "using DGL must not print its backend banner"
    assert not (tmp_path / ".dgl").exists(), "using DGL must not write ~/.dgl/config.json"


def test_another_dgl_backend_is_refused_with_a_clear_error(tmp_path):
    result = run_python("from dgl_iflow.graphs import import_dgl; import_dgl()", tmp_path, DGLBACKEND="mxnet")
    assert result.returncode != 0
    assert "DGLBackendError: dgl_iflow needs DGL's PyTorch backend, but DGLBACKEND='mxnet'" in result.stderr
