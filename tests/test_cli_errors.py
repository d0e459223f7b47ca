"""Every dgl-iflow command, given bad values, answers one `dgl-iflow: error:` line and status 1 or 2, never a traceback.

The commands run in-process through ``main`` (a real process is checked once at the end); the
one model they need is trained once, for one epoch, on the three-node data set.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dgl_iflow.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--blocks", "1", "--hidden", "4", "4", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A trained checkpoint and the wrong files a user may pass instead, by placeholder name."""
    assert not Path(MISSING_DIR).exists(), f"the sweep needs {MISSING_DIR} not to exist"
    root = tmp_path_factory.mktemp("files")
    run = root / "run"
    assert main(["train", "--dataset", "three_node", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    (root / "junk.pt").write_bytes(b"junk, not a checkpoint")
    (root / "empty.pt").write_bytes(b"")
    (root / "a_file").write_text("a file where a folder belongs")
    (root / "empty_run").mkdir()
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "thesis.tex").write_text("a user's own file")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4, 2)), rng.integers(0, 2, (20, 4))
    np.savez(root / "four_nodes.npz", x=x, y=y, edge_index=np.array([[0, 1, 2, 3], [1, 2, 3, 0]]))
    np.savez(root / "no_graph.npz", x=x, y=y)
    np.savez(root / "fractional.npz", x=x, y=y + 0.5, edge_index=np.array([[0], [1]]))
    np.savez(root / "one_sample.npz", x=x[:1], y=y[:1], edge_index=np.array([[0], [1]]))
    np.savez(root / "bad_ids.npz", x=x, y=y, edge_index=np.array([[0, 1], [1, 7]]))
    (root / "bad_edges.txt").write_text("0 1\n1 2 3\n")
    (root / "edges.txt").write_text("0 1\n1 2\n")
    (root / "data.csv").write_text("x,y\n1,0\n")
    return dict(ckpt=str(run / "model.pt"), history=str(run / "history.json"), run=str(run),
                **{name.replace(".", "_"): str(root / name) for name in (
                    "junk.pt", "empty.pt", "a_file", "empty_run", "not_a_run", "four_nodes.npz", "no_graph.npz",
                    "fractional.npz", "one_sample.npz", "bad_ids.npz", "bad_edges.txt", "edges.txt", "data.csv")})


MISSING_DIR = "/nonexistent/dir"
TRAIN = ["train", "--dataset", "three_node", *TINY, "--epochs", "1"]

CASES = [
    # demo
    (["demo", "nope"], "invalid choice: 'nope'"),
    (["demo", "expressiveness", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    (["demo", "expressiveness", "--epochs", "-3"], "argument --epochs: must be an integer >= 1, got -3"),
    (["demo", "three-moons", "--blocks", "0"], "argument --blocks"),
    (["demo", "three-moons", "--seed", "-1"], "argument --seed"),
    (["demo", "three-moons", "--nodes", "5", "--out", "{tmp}/d"], "--nodes applies to the chordal demo only"),
    (["demo", "chordal", "--nodes", "4", "--out", "{tmp}/d"], "prime"),
    (["demo", "expressiveness", "--out", "{a_file}"], "is a file"),
    # datasets
    (["datasets", "nope"], "unknown data set(s) nope"),
    (["datasets", "--bogus"], "unrecognized arguments: --bogus"),
    (["datasets", "--download", "traffic", "--data-root", "{tmp}/root"], "download of data file"),
    # train: bad numbers
    ([*TRAIN, "--epochs", "0", "--out", "{tmp}/r"], "argument --epochs: must be an integer >= 1, got 0"),
    ([*TRAIN, "--epochs", "-3", "--out", "{tmp}/r"], "argument --epochs"),
    ([*TRAIN, "--batch-size", "0", "--out", "{tmp}/r"], "argument --batch-size: must be an integer >= 1"),
    ([*TRAIN, "--chunk-size", "0", "--out", "{tmp}/r"], "argument --chunk-size"),
    ([*TRAIN, "--lr", "-1", "--out", "{tmp}/r"], "argument --lr: must be a number > 0, got -1"),
    ([*TRAIN, "--lr", "0", "--out", "{tmp}/r"], "argument --lr"),
    ([*TRAIN, "--lr", "nan", "--out", "{tmp}/r"], "argument --lr"),
    ([*TRAIN, "--patience", "0", "--out", "{tmp}/r"], "argument --patience"),
    ([*TRAIN, "--patience", "2", "--validation-fraction", "1.5", "--out", "{tmp}/r"], "--validation-fraction"),
    ([*TRAIN, "--blocks", "0", "--out", "{tmp}/r"], "argument --blocks"),
    ([*TRAIN, "--hidden", "0", "--out", "{tmp}/r"], "argument --hidden"),
    ([*TRAIN, "--sigma", "-1", "--out", "{tmp}/r"], "argument --sigma"),
    ([*TRAIN, "--lipschitz", "1.5", "--out", "{tmp}/r"], "argument --lipschitz"),
    ([*TRAIN, "--means", "1,a", "--out", "{tmp}/r"], "--means must be"),
    ([*TRAIN, "--seed", "-1", "--out", "{tmp}/r"], "argument --seed"),
    ([*TRAIN, "--seed", str(2**33), "--out", "{tmp}/r"], "TrainConfig.seed must be below 2**32"),
    ([*TRAIN, "--device", "gpu7", "--out", "{tmp}/r"], "argument --device: not a torch device"),
    # train: what to train on, and where
    (["train", "--out", "{tmp}/r"], "one of the arguments --dataset --data is required"),
    (["train", "--dataset", "three_node", "--data", "{four_nodes_npz}", "--out", "{tmp}/r"], "not allowed with"),
    (["train", "--dataset", "nope", "--out", "{tmp}/r"], "unknown data set 'nope'; valid names: three_moons"),
    (["train", "--dataset", "three_node"], "the following arguments are required: --out"),
    (["train", "--dataset", "three_node", "--edges", "{edges_txt}", "--out", "{tmp}/r"], "go with --data"),
    (["train", "--data", f"{MISSING_DIR}/x.npz", "--out", "{tmp}/r"], "no data file at /nonexistent/dir/x.npz"),
    (["train", "--data", "{junk_pt}", "--out", "{tmp}/r"], "is not a torch.save file"),
    (["train", "--data", "{data_csv}", "--out", "{tmp}/r"], "must end in .npz or .pt"),
    (["train", "--data", "{ckpt}", "--out", "{tmp}/r"], "has no x and no y entry"),
    (["train", "--data", "{no_graph_npz}", "--out", "{tmp}/r"], "give the graph once"),
    (["train", "--data", "{no_graph_npz}", "--edges", f"{MISSING_DIR}/e.txt", "--out", "{tmp}/r"],
     "no edge-list file at"),
    (["train", "--data", "{no_graph_npz}", "--edges", "{bad_edges_txt}", "--out", "{tmp}/r"], "line 2"),
    (["train", "--data", "{fractional_npz}", "--out", "{tmp}/r"], "y must hold whole numbers"),
    (["train", "--data", "{one_sample_npz}", "--out", "{tmp}/r"], "a training and a test part need 2"),
    (["train", "--data", "{bad_ids_npz}", "--out", "{tmp}/r"], "node ids must lie in [0, 4)"),
    (["train", "--data", "{four_nodes_npz}", "--test-fraction", "0", "--out", "{tmp}/r"], "--test-fraction"),
    ([*TRAIN, "--out", "{a_file}"], "is a file, not a run folder"),
    ([*TRAIN, "--out", "{run}"], "already holds a run"),
    ([*TRAIN, "--out", "{empty_run}", "--resume"], "nothing to resume in"),
    ([*TRAIN, "--out", "{not_a_run}", "--overwrite"], "holds files but no run of `dgl-iflow train`"),
    ([*TRAIN, "--out", "{tmp}/r", "--resume", "--overwrite"], "not allowed with argument --resume"),
    ([*TRAIN, "--out", "{run}", "--resume", "--lr", "0.5"], "--lr 0.001 -> 0.5"),
    # evaluate
    (["evaluate", "--checkpoint", "{tmp}/nowhere.pt", "--dataset", "three_node"], "no checkpoint at"),
    (["evaluate", "--checkpoint", "{junk_pt}", "--dataset", "three_node"], "is not a dgl_iflow checkpoint"),
    (["evaluate", "--checkpoint", "{empty_pt}", "--dataset", "three_node"], "an empty file"),
    (["evaluate", "--checkpoint", "{history}", "--dataset", "three_node"], "(JSON text, not a torch zip archive)"),
    (["evaluate", "--checkpoint", "{four_nodes_npz}", "--dataset", "three_node"], "not one torch.save wrote"),
    (["evaluate", "--checkpoint", "{run}", "--dataset", "three_node"], "is a folder, not a dgl_iflow checkpoint"),
    (["evaluate", "--checkpoint", "{ckpt}", "--dataset", "three_node", "--top", "0"], "argument --top"),
    (["evaluate", "--checkpoint", "{ckpt}", "--dataset", "nope"], "unknown data set 'nope'"),
    (["evaluate", "--checkpoint", "{ckpt}", "--data", "{four_nodes_npz}"], "3 nodes"),
    (["evaluate", "--checkpoint", "{ckpt}", "--dataset", "three_node", "--out", f"{MISSING_DIR}/m.json"],
     "the folder /nonexistent/dir does not exist"),
    (["evaluate", "--checkpoint", "{ckpt}", "--dataset", "three_node", "--out", "{run}"], "is a folder"),
    # sample
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,0", "--n", "0", "--out", "{tmp}/s.pt"], "argument --n"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,0", "--n", "-1", "--out", "{tmp}/s.pt"], "argument --n"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,0", "--out", "{tmp}/s.txt"], "unknown file type '.txt'"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,0", "--out", "{tmp}/s"], "unknown file type"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,0", "--out", f"{MISSING_DIR}/s.pt"],
     "the folder /nonexistent/dir does not exist"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,0", "--out", "{run}"], "is a folder"),
    (["sample", "--checkpoint", "{junk_pt}", "--labels", "0,1,0", "--out", "{tmp}/s.pt"], "not a dgl_iflow checkpoint"),
    (["sample", "--checkpoint", "{history}", "--labels", "0,1,0", "--out", "{tmp}/s.csv"], "JSON text"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,5", "--out", "{tmp}/s.pt"], "--labels needs 3 labels"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "a", "--out", "{tmp}/s.pt"], "--labels must be"),
    (["sample", "--checkpoint", "{ckpt}", "--labels", "0,1,0"], "required: --out"),
    # convert-checkpoint
    (["convert-checkpoint", "{tmp}/nowhere.pt", "{tmp}/new.pt"], "no checkpoint at"),
    (["convert-checkpoint", "{junk_pt}", "{tmp}/new.pt"], "not a torch.save archive"),
    (["convert-checkpoint", "{history}", "{tmp}/new.pt"], "not a torch.save archive"),
    (["convert-checkpoint", "{run}", "{tmp}/new.pt"], "is a folder"),
    (["convert-checkpoint", "{ckpt}", f"{MISSING_DIR}/new.pt"], "/nonexistent/dir does not exist"),
    (["convert-checkpoint", "{ckpt}"], "required: target"),
]


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(argv[:4]) + f" [{i}]" for i, (argv, _) in
                                                       enumerate(CASES)])
def test_bad_values_give_one_error_line(files, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("DGL_IFLOW_DATA_URL", f"file://{tmp_path}/no_mirror")  # downloads fail, offline
    argv = [part.format(tmp=tmp_path, **files) for part in argv]
    before = {path: path.read_bytes() for path in Path(files["run"]).iterdir()}
    status, out, err = run_in_process(argv, capsys)
    lines = err.splitlines()
    assert status in (1, 2), (status, err)
    assert len(lines) == 1 and lines[0].startswith("dgl-iflow: error: "), err
    assert "Traceback" not in out + err and "weights_only" not in err
    assert message in lines[0], lines[0]
    # Nothing a failed command touched: no run folder, no output file, the trained run as it was.
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob("s*")) and not (tmp_path / "new.pt").exists()
    assert {path: path.read_bytes() for path in Path(files["run"]).iterdir()} == before
    assert not Path(MISSING_DIR).exists()


def test_the_sweep_covers_every_command():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert {argv[0] for argv, _ in CASES} == commands


def test_cuda_without_cuda_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, _, err = run_in_process([*TRAIN, "--device", "cuda", "--out", str(tmp_path / "r")], capsys)
    assert status == 2 and err.count("\n") == 1 and "sees no CUDA device; use --device cpu" in err


def test_an_unexpected_exception_is_one_line_and_debug_shows_it(files, tmp_path, capsys, monkeypatch):
    import dgl_iflow.models

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(dgl_iflow.models.IGNN, "from_checkpoint", broken)
    argv = ["sample", "--checkpoint", files["ckpt"], "--labels", "0,1,0", "--out", str(tmp_path / "s.pt")]
    status, _, err = run_in_process(argv, capsys)
    assert status == 1 and err.splitlines() == ["dgl-iflow: error: unexpected TypeError: a bug (--debug shows the "
                                                "traceback; please report it)"]
    with pytest.raises(TypeError, match="a bug"):
        main([*argv, "--debug"])


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "three_node", "--epochs", "0", "--out", "{tmp}/r"],
    ["sample", "--checkpoint", "{history}", "--labels", "0,1,0", "--out", "{tmp}/s.csv"],
])
def test_a_real_process_prints_one_line(files, tmp_path, argv):
    argv = [part.format(tmp=tmp_path, **files) for part in argv]
    result = subprocess.run([sys.executable, "-m", "dgl_iflow.cli", *argv], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode in (1, 2)
    assert result.stderr.startswith("dgl-iflow: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_history_json_is_named_as_json(files, capsys):
    json.loads(Path(files["history"]).read_text())  # the file really is the run's history
    status, _, err = run_in_process(["evaluate", "--checkpoint", files["history"], "--dataset", "three_node"], capsys)
    assert status == 1
    assert err == f"dgl-iflow: error: {files['history']} is not a dgl_iflow checkpoint (JSON text, not a torch zip " \
                  f"archive)\n"
