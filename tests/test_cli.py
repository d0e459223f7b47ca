"""The dgl-iflow command: train, sample and evaluate round trip on a small data set."""
import json

import pytest
import torch

from dgl_iflow.cli import main


def test_train_sample_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "three_node", "--blocks", "2", "--hidden", "8", "8", "--epochs", "2",
                 "--means=0,1.5;0,-1.5", "--sigma", "0.6", "--out", str(out), "--no-progress"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    samples_path = tmp_path / "samples.pt"
    assert main(["sample", "--checkpoint", str(out / "model.pt"), "--labels", "0,1,0", "--n", "7",
                 "--out", str(samples_path)]) == 0
    assert torch.load(samples_path).shape == (7, 3, 2)
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--dataset", "three_node",
                 "--out", str(metrics_path)]) == 0
    report = json.loads(metrics_path.read_text())
    assert 0.0 <= report["node_accuracy"] <= 1.0 and report["energy"] > 0
    figures = [tmp_path / "metrics_samples.png", tmp_path / "metrics_proba.png"]
    assert report["figures"] == [str(path) for path in figures]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in figures)
    with pytest.raises(SystemExit, match="comma-separated integers"):
        main(["sample", "--checkpoint", str(out / "model.pt"), "--labels", "a,b", "--out", str(samples_path)])
