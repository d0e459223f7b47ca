"""dgl-iflow train, sample and the help texts as a user meets them: nothing lost, runs resumed and
extended, your own data in, samples out in the data's units, help that says what it does."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dgl_iflow.checkpoints import read_checkpoint
from dgl_iflow.cli import main

TINY = ["--blocks", "1", "--hidden", "4", "4", "--no-progress"]
TRAIN = ["train", "--dataset", "three_node", *TINY]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgl-iflow: error: "), captured.err
    return lines[0]


def contents(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder`` (hidden ones too) with its bytes and modification time."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A two-epoch run on the three-node data set, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*TRAIN, "--epochs", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# -- nothing lost ----------------------------------------------------------------------------

def test_a_run_folder_holds_the_model_its_settings_and_history(finished_run):
    assert sorted(path.name for path in finished_run.iterdir()) == ["curves.png", "history.json", "model.pt", "run.json"]
    record = json.loads((finished_run / "run.json").read_text())
    assert record["epochs"] == 2 and record["settings"]["--blocks"] == 1 and record["settings"]["--lr"] == 1e-3
    checkpoint = read_checkpoint(finished_run / "model.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["data_units"]["dataset"] == "three_node"


def test_a_second_train_into_the_same_folder_leaves_the_first_run_byte_identical(run, capsys):
    (run / "eval.json").write_text("{}")
    before = contents(run.parent)
    for epochs in ("1", "2"):
        assert main([*TRAIN, "--epochs", epochs, "--out", str(run)]) == 1
        line = one_error_line(capsys)
        assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert contents(run.parent) == before


def test_overwrite_replaces_the_whole_folder(run, capsys):
    (run / "eval.json").write_text("{}")  # describes the old model: must go with it
    assert main([*TRAIN, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert sorted(path.name for path in run.iterdir()) == ["curves.png", "history.json", "model.pt", "run.json"]
    assert [record["epoch"] for record in json.loads((run / "history.json").read_text())] == [1]
    assert read_checkpoint(run / "model.pt")["train_config"]["epochs"] == 1
    assert [path.name for path in run.parent.iterdir()] == ["run"]  # no temporary folder left


@pytest.mark.parametrize("failure, status", [(ValueError("boom"), 1), (KeyboardInterrupt(), 130)])
def test_a_failed_overwrite_keeps_the_old_run(run, capsys, monkeypatch, failure, status):
    import dgl_iflow.training

    def fails_midway(model, graph, x, y, config, **kwargs):
        Path(config.checkpoint_path).write_bytes(b"half a new run")
        raise failure

    monkeypatch.setattr(dgl_iflow.training, "fit", fails_midway)
    before = contents(run.parent)
    assert main([*TRAIN, "--epochs", "1", "--out", str(run), "--overwrite"]) == status
    assert contents(run.parent) == before  # the old run whole, and no half of the new one beside it


def test_a_fresh_run_that_fails_leaves_a_folder_train_accepts_again(tmp_path, capsys, monkeypatch):
    import dgl_iflow.training

    def fails_at_once(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(dgl_iflow.training, "fit", fails_at_once)
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 1
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0


def test_resume_with_more_epochs_continues_from_the_last_epoch(run, capsys):
    old = json.loads((run / "history.json").read_text())
    assert main([*TRAIN, "--epochs", "3", "--out", str(run), "--resume"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert history[:2] == old  # the first epochs as trained, not trained again
    # The cosine schedule now spans 3 epochs and ends at lr / 100, where the 2-epoch run ended.
    assert old[-1]["lr"] == pytest.approx(1e-5) and history[-1]["lr"] == pytest.approx(1e-5)
    checkpoint = read_checkpoint(run / "model.pt")
    assert checkpoint["epoch"] == 3 and "data_units" in checkpoint
    assert json.loads((run / "run.json").read_text())["epochs"] == 3

    # Resuming without --epochs takes the run's own: nothing left to train, nothing rewritten.
    before = contents(run)
    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert contents(run) == before


def test_a_run_recorded_before_a_leave_out_option_existed_resumes(run):
    record = json.loads((run / "run.json").read_text())
    del record["settings"]["--no-readout"]  # as `train` wrote it before the readout
    del record["settings"]["--target"]  # and before --target
    (run / "run.json").write_text(json.dumps(record))
    assert main([*TRAIN, "--epochs", "3", "--out", str(run), "--resume"]) == 0
    assert read_checkpoint(run / "model.pt")["epoch"] == 3


def test_resume_names_every_setting_that_differs(run, capsys):
    before = contents(run)
    assert main(["train", "--dataset", "three_node", "--blocks", "2", "--hidden", "4", "4", "--lr", "0.01",
                 "--no-graph-mean", "--epochs", "3", "--out", str(run), "--resume", "--no-progress"]) == 1
    line = one_error_line(capsys)
    assert "--blocks 1 -> 2, --no-graph-mean (not given) -> (given), --lr 0.001 -> 0.01 (run's -> given)" in line
    assert "only --epochs may grow" in line and "--overwrite" in line
    assert main([*TRAIN, "--epochs", "1", "--out", str(run), "--resume"]) == 1
    assert "--epochs 1 is below the 2 epochs" in one_error_line(capsys)
    assert contents(run) == before


# -- your own data, and samples in its units -----------------------------------------------------

@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> dict:
    """A 4-node ring with features far from standard units, a fixed split, names; trained 1 epoch."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    num, nodes = 240, 4
    y = rng.integers(0, 2, (num, nodes))
    y[:, 3] = y[:, 0]  # node 3 copies node 0: label vectors with y3 != y0 are never seen
    x = rng.normal(size=(num, nodes, 2)) * np.array([20.0, 0.5]) + np.array([300.0, -7.0]) + 3.0 * y[..., None]
    split = (np.arange(num) % 4 == 0).astype(np.int64)
    np.savez(root / "ring.npz", x=x, y=y, split=split, node_names=np.array(["a", "b", "c", "d"]),
             feature_names=np.array(["speed", "load"]))
    (root / "ring.txt").write_text("# a ring, each edge once\n0 1\n1 2\n2 3  # the last\n3 0\n")
    out = root / "run"
    assert main(["train", "--data", str(root / "ring.npz"), "--edges", str(root / "ring.txt"), "--undirected",
                 *TINY, "--epochs", "1", "--out", str(out)]) == 0
    train = x[split == 0]
    return dict(root=root, checkpoint=out / "model.pt", mean=train.mean(axis=0), std=train.std(axis=0), x=x)


def sample(checkpoint: Path, out: Path, *options: str, labels: str = "0,1,0,0") -> None:
    assert main(["sample", "--checkpoint", str(checkpoint), "--labels", labels, "--n", "50", "--seed", "3",
                 "--out", str(out), *options]) == 0


def test_samples_come_back_in_the_data_units(own_data, tmp_path, capsys):
    sample(own_data["checkpoint"], tmp_path / "data.npy")
    assert "in the units of the data (ring.npz)" in capsys.readouterr().out
    sample(own_data["checkpoint"], tmp_path / "model.npy", "--standardized")
    assert "standardized units" in capsys.readouterr().out
    in_data_units, standardized = np.load(tmp_path / "data.npy"), np.load(tmp_path / "model.npy")
    assert in_data_units.shape == standardized.shape == (50, 4, 2)
    # The same draws, mapped back with the training part's statistics of the file's own features.
    np.testing.assert_allclose(in_data_units, standardized * own_data["std"] + own_data["mean"], rtol=1e-5, atol=1e-3)
    assert abs(standardized.mean()) < 5 and abs(in_data_units[..., 0].mean() - 300) < 100


def test_sample_writes_pt_npy_and_csv_by_extension(own_data, tmp_path, capsys):
    for name in ("s.pt", "s.npy", "s.csv"):
        sample(own_data["checkpoint"], tmp_path / name)
    tensor, array = torch.load(tmp_path / "s.pt"), np.load(tmp_path / "s.npy")
    assert tensor.shape == (50, 4, 2)
    np.testing.assert_array_equal(tensor.numpy(), array)
    with open(tmp_path / "s.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["a:speed", "a:load", "b:speed", "b:load", "c:speed", "c:load", "d:speed", "d:load"]
    assert len(rows) == 51
    np.testing.assert_allclose(np.array(rows[1:], dtype=np.float64), array.reshape(50, 8), rtol=1e-6)


def test_csv_names_nodes_by_number_when_the_data_has_no_names(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    sample(out / "model.pt", tmp_path / "s.csv", labels="0,1,0")
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header == "node0:x1,node0:x2,node1:x1,node1:x2,node2:x1,node2:x2"
    assert "(three_node, which is not standardized)" in capsys.readouterr().out


def test_an_unseen_label_vector_is_a_warning(own_data, tmp_path, capsys):
    sample(own_data["checkpoint"], tmp_path / "seen.pt", labels="1,0,1,1")
    assert capsys.readouterr().err == ""
    sample(own_data["checkpoint"], tmp_path / "unseen.pt", labels="1,0,1,0")  # y3 != y0: never in training
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("dgl-iflow: warning: a label vector never seen in training")


def test_evaluate_takes_your_own_data_too(own_data, tmp_path, capsys):
    root = own_data["root"]
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(own_data["checkpoint"]), "--data", str(root / "ring.npz"),
                 "--edges", str(root / "ring.txt"), "--undirected", "--top", "2", "--no-progress",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == "ring.npz" and 0 <= report["node_accuracy"] <= 1
    # Data whose training part has other statistics (another file, or another split of it): one line.
    with np.load(root / "ring.npz") as ring:
        np.savez(tmp_path / "moved.npz", **{**ring, "x": ring["x"] + 1.0})
    assert main(["evaluate", "--checkpoint", str(own_data["checkpoint"]), "--data", str(tmp_path / "moved.npz"),
                 "--edges", str(root / "ring.txt"), "--undirected", "--top", "2", "--no-progress"]) == 1
    assert "is not split or scaled as when" in capsys.readouterr().err


# -- help and listings ---------------------------------------------------------------------------

def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_is_plain_text_and_says_what_it_does(capsys):
    top = help_text(capsys)
    assert "``" not in top and ":class:" not in top and "one line" in top
    demo = help_text(capsys, "demo")
    assert all(f"{name}:" in demo for name in ("expressiveness", "chordal", "three-moons"))
    train = help_text(capsys, "train")
    for shown in ("--lr LR Adam's learning rate (default: 0.001)", "(default: l3)", "--seed SEED",
                  "(default: 0)", "--device DEVICE where to train: cpu, cuda, cuda:1, ... (default: cpu)",
                  "edge_index (2, E)", "--edges FILE", "--resume", "--overwrite", "docs/datasets.md"):
        assert shown in train, shown
    evaluate = help_text(capsys, "evaluate")
    assert "FILE_samples.png" in evaluate and "FILE_proba.png" in evaluate and "FILE_reliability.png" in evaluate
    sample_help = help_text(capsys, "sample")
    assert all(suffix in sample_help for suffix in (".pt", ".npy", ".csv", ".png"))
    assert "data's own units" in sample_help and "--standardized" in sample_help
    assert "(default: 100)" in sample_help


def test_datasets_marks_files_not_downloaded_as_such(tmp_path, capsys):
    assert main(["datasets", "traffic", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "traffic          not downloaded" in out and "PROBLEM" not in out
    assert out.count("not downloaded") == 6  # the data set, its four files and the closing hint
    (tmp_path / "traffic").mkdir()
    (tmp_path / "traffic" / "sensor_neighbors.p").write_bytes(b"someone else's file")
    assert main(["datasets", "traffic", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "traffic          PROBLEM" in out and "size mismatch" in out and "--replace" in out


def test_lr_after_extension_follows_the_new_cosine(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--lr", "0.01", "--out", str(out)]) == 0
    assert main([*TRAIN, "--epochs", "4", "--lr", "0.01", "--out", str(out), "--resume"]) == 0
    lrs = [record["lr"] for record in json.loads((out / "history.json").read_text())]
    floor = 0.01 / 100
    assert lrs[0] == pytest.approx(floor)  # the 1-epoch run ended at the floor
    for epoch, lr in enumerate(lrs[1:], start=2):
        assert lr == pytest.approx(floor + (0.01 - floor) * (1 + math.cos(math.pi * epoch / 4)) / 2), epoch


def test_the_sample_figure_draws_the_real_rows_of_that_label_vector():
    from dgl_iflow.cli import _data_units, _real_rows
    from dgl_iflow.data import load_dataset

    dataset = load_dataset("three_node")
    labels = torch.tensor([0, 1, 0])
    rows = _real_rows(_data_units(dataset), labels, standardized=False)
    x_test, y_test = dataset.split("test")
    assert torch.equal(rows, x_test[(y_test == labels).all(dim=1)]) and len(rows) > 0
    assert _real_rows(None, labels, standardized=False) is None  # your own data: not reloaded
