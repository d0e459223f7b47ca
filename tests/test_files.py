"""dgl_iflow.files: every file written whole or not at all, with the umask's mode; run folders swapped whole."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from dgl_iflow.checkpoints import atomic_save
from dgl_iflow.files import atomic_write, atomic_write_json, atomic_write_text, replacing_folder, save_figure


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for one test; the old one is back afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_and_checkpoints_get_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "a")
    atomic_save({"state_dict": {}}, tmp_path / "model.pt")
    assert mode(tmp_path / "a.txt") == 0o666 & ~mask
    assert mode(tmp_path / "model.pt") == 0o666 & ~mask  # 0644 under the usual umask, not mkstemp's 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "history.json"
    atomic_write_json(path, [1, 2])
    before = path.read_bytes()

    def broken(file):
        file.write(b"[1, 2, 3")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, lambda file: (_ for _ in ()).throw(KeyboardInterrupt))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]
    assert json.loads(before) == [1, 2]


def test_a_missing_folder_is_an_error_not_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        atomic_write_text(tmp_path / "missing" / "a.txt", "a")
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        atomic_write_text(tmp_path / "file" / "a.txt", "a")
    assert not (tmp_path / "missing").exists()


def test_save_figure_writes_the_format_of_the_suffix(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    FigureCanvasAgg(figure)
    figure.subplots().plot([0, 1], [1, 0])
    assert save_figure(figure, tmp_path / "f.png", dpi=50).read_bytes()[:4] == b"\x89PNG"
    assert save_figure(figure, tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


def test_replacing_folder_swaps_whole_or_not_at_all(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"old model")
    (run / "eval.json").write_text("{}")
    with pytest.raises(RuntimeError, match="boom"):
        with replacing_folder(run) as folder:
            (folder / "model.pt").write_bytes(b"half a new model")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run / "model.pt").read_bytes() == b"old model" and (run / "eval.json").exists()

    with replacing_folder(run) as folder:
        assert folder.parent == tmp_path and folder.name.startswith(".run.new-")
        torch.save(torch.ones(2), folder / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in run.iterdir()] == ["model.pt"]  # the old eval.json went with the old run
    assert torch.equal(torch.load(run / "model.pt"), torch.ones(2))

    with replacing_folder(tmp_path / "fresh") as folder:
        (folder / "a").write_text("a")
    assert (tmp_path / "fresh" / "a").read_text() == "a"
