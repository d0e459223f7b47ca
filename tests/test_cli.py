"""The dgl-iflow command: a train, sample and evaluate round trip, and how it reports errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgl_iflow.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--dataset", "three_node", "--blocks", "2", "--hidden", "8", "8", "--epochs", "2",
                 "--means=0,1.5;0,-1.5", "--sigma", "0.6", "--out", str(out), "--no-progress"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    return out / "model.pt"


def test_train_sample_evaluate(checkpoint, tmp_path):
    samples_path = tmp_path / "samples.pt"
    assert main(["sample", "--checkpoint", str(checkpoint), "--labels", "0,1,0", "--n", "7",
                 "--out", str(samples_path)]) == 0
    assert torch.load(samples_path).shape == (7, 3, 2)
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "three_node",
                 "--out", str(metrics_path), "--no-progress"]) == 0
    report = json.loads(metrics_path.read_text())
    assert 0.0 <= report["node_accuracy"] <= 1.0 and report["energy"] > 0
    assert 0.0 <= report["node_calibration_error"] <= 1.0
    sets = report["uncertainty"]["sets"]
    assert set(sets) == {"0.5", "0.9", "0.95"}
    assert all(0.0 <= sets[level][kind] <= 1.0 for level in sets for kind in ("raw", "split", "adaptive"))
    assert set(report["uncertainty"]["labels"]) == {"flow", "logistic"}
    figures = [tmp_path / "metrics_samples.png", tmp_path / "metrics_proba.png", tmp_path / "metrics_reliability.png"]
    assert report["figures"] == [str(path) for path in figures]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in figures)


def test_train_with_patience_keeps_the_best_validation_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "three_node", "--blocks", "2", "--hidden", "8", "8", "--epochs", "40",
                 "--lr", "3e-2", "--patience", "2", "--validation-fraction", "0.25", "--out", str(out),
                 "--no-progress"]) == 0
    history = json.loads((out / "history.json").read_text())
    nll = [record["val_nll"] for record in history]
    best = min(range(len(nll)), key=nll.__getitem__) + 1
    assert f"kept epoch {best}" in capsys.readouterr().out
    assert len(history) == 40 or len(history) == best + 2


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgl-iflow: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("labels, message", [
    ("0,1,5", r"--labels needs 3 labels \(one per node of the model's graph\) in \[0, 2\); got 0,1,5"),
    ("0,1", "--labels needs 3 labels"),
    ("a,b", "--labels must be comma-separated integers"),
])
def test_bad_input_is_one_line_and_status_1(checkpoint, tmp_path, capsys, labels, message):
    out = tmp_path / "samples.pt"
    assert main(["sample", "--checkpoint", str(checkpoint), "--labels", labels, "--out", str(out)]) == 1
    assert re.search(message, one_error_line(capsys))
    assert not out.exists()


@pytest.mark.parametrize("argv, status, message", [
    (["sample", "--checkpoint", "nowhere.pt", "--labels", "0", "--out", "x.pt"], 1, "no checkpoint at nowhere.pt"),
    (["train", "--dataset", "nope", "--out", "unused"], 1, "unknown data set 'nope'; valid names: three_moons"),
    (["train", "--dataset", "three_node", "--means", "1,a", "--out", "unused"], 1, "--means must be"),
    (["train", "--dataset", "three_node", "--patience", "2", "--validation-fraction", "1.5", "--out", "unused"], 2,
     "argument --validation-fraction: must lie in (0, 1), got 1.5"),
    (["datasets", "nope"], 1, "unknown data set(s) nope"),
    (["sample", "--checkpoint", "x.pt", "--labels", "0", "--n", "many", "--out", "x.pt"], 2,
     "argument --n: invalid int value: 'many' (see `dgl-iflow sample --help`)"),
    (["bogus"], 2, "invalid choice: 'bogus'"),
])
def test_errors_and_usage_errors(tmp_path, monkeypatch, capsys, argv, status, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == status
    assert message in one_error_line(capsys)
    assert not (tmp_path / "unused").exists()


def test_debug_shows_the_exception(checkpoint, tmp_path):
    argv = ["sample", "--checkpoint", str(checkpoint), "--labels", "0,1,5", "--out", str(tmp_path / "s.pt")]
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="--labels needs 3 labels"):
            main(debug_argv)


def test_a_real_process_prints_no_traceback(checkpoint, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dgl_iflow.cli", "sample", "--checkpoint", str(checkpoint), "--labels", "0,1,5",
         "--out", str(tmp_path / "s.pt")],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.startswith("dgl-iflow: error: --labels needs 3 labels") and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_every_command_says_what_it_writes(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"demo", "datasets", "train", "evaluate", "sample", "convert-checkpoint"}
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "Writes" in text or "Prints" in text, name


def test_convert_checkpoint_command(tmp_path, capsys):
    from test_checkpoints import old_format_checkpoint, small_model

    from dgl_iflow import IGNN

    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    old_format_checkpoint(old, small_model())
    assert main(["convert-checkpoint", str(old), str(new)]) == 0
    assert f"wrote {new}" in capsys.readouterr().out
    IGNN.load(new)
    assert main(["sample", "--checkpoint", str(old), "--labels", "0,1,0", "--out", str(tmp_path / "s.pt")]) == 1
    assert "convert-checkpoint" in one_error_line(capsys)
