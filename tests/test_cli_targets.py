"""dgl-iflow train, evaluate and sample with real-valued node targets (--target), from a user's file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dgl_iflow.checkpoints import read_checkpoint
from dgl_iflow.cli import main
from dgl_iflow.data.scaling import to_data_units
from dgl_iflow.models import IGNN
from dgl_iflow.recipe import TARGET_LAW

TINY = ["--blocks", "1", "--hidden", "4", "4", "--no-progress"]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgl-iflow: error: "), captured.err
    return lines[0]


@pytest.fixture(scope="module")
def target_run(tmp_path_factory) -> dict:
    """A 4-node ring whose features move with real-valued targets ``(N, V, 2)``; trained 2 epochs."""
    root = tmp_path_factory.mktemp("targets")
    rng = np.random.default_rng(1)
    num, nodes = 200, 4
    y = rng.normal(size=(num, nodes, 2)) * 3.0 + 10.0  # in their own units, not standardized
    x = np.stack([y.sum(-1), y[..., 0] - y[..., 1]], -1) + rng.normal(size=(num, nodes, 2))
    edge_index = np.array([[0, 1, 2, 3, 1, 2, 3, 0], [1, 2, 3, 0, 0, 1, 2, 3]])
    np.savez(root / "ring.npz", x=x, y=y, edge_index=edge_index)
    out = root / "run"
    assert main(["train", "--data", str(root / "ring.npz"), "--target", "real", *TINY, "--epochs", "2",
                 "--out", str(out)]) == 0
    return dict(root=root, out=out, y=y)


def test_train_builds_a_model_of_the_targets_and_records_them(target_run):
    checkpoint = read_checkpoint(target_run["out"] / "model.pt")
    model = IGNN.from_checkpoint(checkpoint)
    assert model.continuous and model.label_shape == (2,) and model.config["latent"] == TARGET_LAW
    assert model.readout.regression  # the recipe's readout, by ridge regression for targets
    assert checkpoint["data_units"]["target"] == "real"
    record = json.loads((target_run["out"] / "run.json").read_text())
    assert record["settings"]["--target"] == "real"


def test_evaluate_reports_generation_prediction_and_intervals(target_run, tmp_path):
    out = tmp_path / "eval.json"
    # No --target: the one the run was trained with.
    assert main(["evaluate", "--checkpoint", str(target_run["out"] / "model.pt"), "--data",
                 str(target_run["root"] / "ring.npz"), "--no-progress", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["generation"]) == {"flow", "target_gaussian"}
    assert report["prediction"]["flow"] < report["prediction"]["training_mean"]
    assert set(report["intervals"]) == {"0.5", "0.9", "0.95"}
    # 40 test rows: 12 calibrate, too few for a split conformal 0.95 interval, whose width is null.
    assert report["protocol"]["calibration_rows"] == 12 and report["intervals"]["0.95"]["split_width"] is None
    assert report["intervals"]["0.5"]["own_width"] < report["intervals"]["0.9"]["own_width"]
    assert [Path(path).name for path in report["figures"]] == ["eval_sweep.png", "eval_predictions.png"]
    assert all(Path(path).stat().st_size > 0 for path in report["figures"])


def test_sample_takes_real_targets_node_by_node(target_run, tmp_path, capsys):
    targets = ",".join(["10.5", "9"] * 4)
    assert main(["sample", "--checkpoint", str(target_run["out"] / "model.pt"), "--labels", targets, "--n", "30",
                 "--seed", "1", "--out", str(tmp_path / "s.pt")]) == 0
    samples = torch.load(tmp_path / "s.pt")
    assert "in the units of the data (ring.npz)" in capsys.readouterr().out
    # The model's own draws of X | Y = y for these targets, mapped back to the data's units.
    checkpoint = read_checkpoint(target_run["out"] / "model.pt")
    model, units = IGNN.from_checkpoint(checkpoint).eval(), checkpoint["data_units"]
    torch.manual_seed(1)
    drawn = model.sample(model.graph, torch.tensor([[10.5, 9.0]] * 4), 30)
    torch.testing.assert_close(samples, to_data_units(drawn, units["mean"], units["std"]), rtol=0, atol=0)
    assert main(["sample", "--checkpoint", str(target_run["out"] / "model.pt"), "--labels", targets, "--n", "4",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(target_run["out"] / "model.pt"), "--labels", "1,2,3",
                 "--out", str(tmp_path / "t.pt")]) == 1
    assert "needs 8 targets (2 per node, node by node" in one_error_line(capsys)


def test_target_mistakes_are_one_line(target_run, tmp_path, capsys):
    data = str(target_run["root"] / "ring.npz")
    checkpoint = str(target_run["out"] / "model.pt")
    assert main(["train", "--data", data, "--target", "ramp", *TINY, "--out", str(tmp_path / "a")]) == 1
    assert "--target with --data is one of classes, real" in one_error_line(capsys)
    assert main(["train", "--dataset", "three_node", "--target", "real", *TINY, "--out", str(tmp_path / "b")]) == 1
    assert "not a target of three_node (it has one kind of label)" in one_error_line(capsys)
    assert main(["train", "--data", data, "--target", "real", "--means", "1,1;2,2", *TINY,
                 "--out", str(tmp_path / "c")]) == 1
    assert "real-valued targets" in one_error_line(capsys)
    # Real-valued targets read as classes: the file's fractions are refused, in one line.
    assert main(["train", "--data", data, *TINY, "--out", str(tmp_path / "d")]) == 1
    assert "whole numbers" in one_error_line(capsys)
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", data, "--target", "classes", "--no-progress"]) == 1
    assert "was trained with --target real, not classes" in one_error_line(capsys)
    assert main(["train", "--data", data, "--target", "real", "--no-label-context", *TINY,
                 "--out", str(tmp_path / "e")]) == 1
    assert "label context of classes" in one_error_line(capsys)
    # Resumed without --target: the default, classes, is another setting than the run's.
    assert main(["train", "--data", data, *TINY, "--resume", "--out", str(target_run["out"])]) == 1
    assert "--target real -> classes" in one_error_line(capsys)
