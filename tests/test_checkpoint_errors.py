"""A file that is no checkpoint gets one line saying what it is not, and never torch's advice to load it unsafely."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dgl_iflow import IGNN
from dgl_iflow.checkpoints import CheckpointError, read_checkpoint


class Payload:
    def __reduce__(self):
        return print, ("ran",)


def write_cases(folder) -> dict[str, str]:
    """File name -> what the error must say it is."""
    (folder / "junk.pt").write_bytes(b"junk bytes \x00\xff")
    (folder / "notes.pt").write_text("some notes")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "history.json").write_text('[{"epoch": 1}]')
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    np.save(folder / "array.npy", np.zeros(3))
    np.savez(folder / "arrays.npz", a=np.zeros(3))
    torch.save(torch.zeros(3), folder / "tensor.pt")
    torch.save({"weights": torch.zeros(3)}, folder / "dict.pt")
    (folder / "truncated.pt").write_bytes((folder / "tensor.pt").read_bytes()[:200])
    (folder / "a_folder.pt").mkdir()
    return {
        "junk.pt": "(not a torch zip archive)",
        "notes.pt": "(a text file, not a torch zip archive)",
        "empty.pt": "(an empty file)",
        "history.json": "(JSON text, not a torch zip archive)",
        "image.png": "(a PNG image)",
        "array.npy": "(a NumPy .npy file)",
        "arrays.npz": "(a zip archive, but not one torch.save wrote)",
        "tensor.pt": "(a torch.save file of Tensor)",
        "dict.pt": "(a torch.save file of a dict without a state_dict entry)",
        "truncated.pt": "(not a torch zip archive)",
        "a_folder.pt": "is a folder, not a dgl_iflow checkpoint",
    }


def test_each_non_checkpoint_says_what_it_is_not(tmp_path):
    for name, what in write_cases(tmp_path).items():
        for load in (read_checkpoint, IGNN.load):
            with pytest.raises(CheckpointError) as error:
                load(tmp_path / name)
            message = str(error.value)
            assert message.startswith(f"{tmp_path / name} is ") and what in message, (name, message)
            assert "\n" not in message and "weights_only" not in message, message


def test_refusals_do_not_repeat_the_advice_to_load_unsafely(tmp_path):
    for name, write in (("zip.pt", lambda path: torch.save({"state_dict": {}, "x": Payload()}, path)),
                        ("bare.pt", lambda path: path.write_bytes(pickle.dumps({"state_dict": {}, "x": Payload()})))):
        write(tmp_path / name)
        with pytest.raises(CheckpointError, match=r"refused.*(__builtin__|builtins)\.print") as error:
            read_checkpoint(tmp_path / name)
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "nowhere.pt")
