"""Checkpoint files that load without running code from them.

Everything a checkpoint holds (configuration, weights, optimizer and scheduler state, history,
random states) is tensors, numbers, strings, ``None`` and plain lists, tuples and dicts, so
:func:`read_checkpoint` loads it with ``torch.load(weights_only=True)``. A file whose pickle asks
for anything else is refused before any of it is unpickled into objects.

Training checkpoints written before this rule kept NumPy's random state as a NumPy array, which a
safe load cannot read; :func:`convert_checkpoint` rewrites them once, with an unpickler that
accepts exactly the types those files hold and nothing else.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import random
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write

#: Globals that checkpoints of the current format name besides the ones ``weights_only``
#: accepts: the pieces NumPy pickles an ``ndarray`` with (the old NumPy random state).
_OLD_NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),  # NumPy 1, 2
    ("numpy", "ndarray"), ("numpy", "dtype"),
})
#: What torch itself pickles a state dict with (storages are resolved by ``torch.load``).
_TORCH_GLOBALS = frozenset({
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("_codecs", "encode"), ("torch", "Size"),
})


class CheckpointError(ValueError):
    """A checkpoint file cannot be read safely: unreadable, not ours, or carrying code."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it
    (:func:`~dgl_iflow.files.atomic_write`; missing folders are created first).

    A failure at any point leaves an existing file at ``path`` untouched. The file gets mode
    ``0o666`` less the umask, as any new file: a checkpoint holds weights, not secrets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: torch.save(obj, file))


def _walk_globals(stream: io.BytesIO, names: list[str]) -> None:
    """Append the globals of one pickle in ``stream`` to ``names``; raise if it is no pickle."""
    strings: list[str] = []
    for opcode, argument, _ in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "INST"):
            names.append(argument.replace(" ", ".", 1))
        elif opcode.name == "STACK_GLOBAL":
            names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
        elif isinstance(argument, str):
            strings.append(argument)


def pickle_globals(path: str | os.PathLike) -> list[str] | None:
    """``module.name`` of every global the file's pickles refer to, read without loading them.

    ``pickletools`` walks the opcodes and executes none of them. A ``torch.save`` zip archive
    has one pickle; another file is read as consecutive pickles (torch's legacy format) up to
    the first bytes that are none. Names pushed through the memo of protocol 4's
    ``STACK_GLOBAL`` come out as ``"?"``.

    Returns
    -------
    list of str or None
        Sorted names; ``None`` if the file holds no pickle at all.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(members) != 1:
                return None
            data, limit = archive.read(members[0]), 1
    else:
        data, limit = Path(path).read_bytes(), None
    stream = io.BytesIO(data)
    names: list[str] = []
    count = 0
    while stream.tell() < len(data) and (limit is None or count < limit):
        try:
            _walk_globals(stream, names)
        except ValueError:  # no pickle here: garbage, or the legacy format's raw storages
            if count == 0:
                return None
            break
        count += 1
    return sorted(set(names))


def _unsafe_names(names: list[str]) -> list[str]:
    """The globals beyond what torch pickles tensors and state dicts with."""
    torch_names = {f"{module}.{name}" for module, name in _TORCH_GLOBALS}
    return [name for name in names if name not in torch_names
            and not (name.startswith("torch.") and name.endswith("Storage") and name.count(".") == 1)]


def _is_old_format(names: list[str]) -> bool:
    """Whether these globals are those of a training checkpoint written before the safe format."""
    unsafe = set(_unsafe_names(names))
    return bool(unsafe) and unsafe <= {f"{module}.{name}" for module, name in _OLD_NUMPY_GLOBALS}


def _describe(path: Path) -> str:
    """What a file that is no torch zip archive looks like, for error messages."""
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "an empty file"
    kinds = ((b"\x89PNG", "a PNG image"), (b"\x93NUMPY", "a NumPy .npy file"), (b"%PDF", "a PDF file"))
    for magic, kind in kinds:
        if head.startswith(magic):
            return kind
    text = head.lstrip()
    if text[:1] in (b"{", b"[") and b"\0" not in head:
        return "JSON text, not a torch zip archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a torch zip archive"
    return "a text file, not a torch zip archive"


def _refused(path: str | os.PathLike, names: list[str]) -> CheckpointError:
    unsafe = _unsafe_names(names)
    named = f" (it refers to {', '.join(unsafe)})" if unsafe else ""
    # torch's own message ends by advising a load with weights_only=False; that would run the
    # very code this refuses, so none of it is passed on.
    return CheckpointError(
        f"checkpoint {path} refused: its pickle asks for objects other than tensors, numbers, "
        f"strings and plain containers{named}, and unpickling them could run code from the "
        f"file. dgl_iflow checkpoints never hold such objects; load this file only if you trust "
        f"where it came from")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict written by :func:`atomic_save`; never runs code from the file.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    CheckpointError
        If the file is no dgl_iflow checkpoint (the message says what it is not: a folder, no
        torch zip archive, no ``state_dict`` entry), carries objects beyond tensors and plain
        containers (named in the message), or is an older training checkpoint (the message
        says how to convert it). Every message is one line.
    """
    file = Path(path)
    if file.is_dir():
        raise CheckpointError(f"{path} is a folder, not a dgl_iflow checkpoint")
    if not file.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # torch.save has written zip archives since torch 1.6, and dgl_iflow never wrote another
    # format; torch.load's errors for anything else ("invalid load key", a bare number) say
    # nothing to a user.
    if not zipfile.is_zipfile(file):
        names = pickle_globals(file)  # a bare pickle may still carry code: say so
        if names and _unsafe_names(names):
            raise _refused(path, names)
        raise CheckpointError(f"{path} is not a dgl_iflow checkpoint ({_describe(file)})")
    if pickle_globals(file) is None:
        raise CheckpointError(f"{path} is not a dgl_iflow checkpoint (a zip archive, but not one "
                              f"torch.save wrote)")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = pickle_globals(file)
        if _is_old_format(names):
            raise CheckpointError(
                f"checkpoint {path} is a training checkpoint written before checkpoints became "
                f"safe to load: it keeps NumPy's random state as a NumPy array, which a load that "
                f"runs no code from the file cannot read. Convert it once with `dgl-iflow "
                f"convert-checkpoint {path} NEW.pt` (dgl_iflow.checkpoints.convert_checkpoint), "
                f"which reads only those types") from None
        raise _refused(path, names) from None
    except Exception as err:  # torch raises many types for a damaged archive
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in reason:
            reason = type(err).__name__
        raise CheckpointError(f"checkpoint {path} is damaged and could not be read ({reason})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        what = "a dict without a state_dict entry" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a dgl_iflow checkpoint (a torch.save file of {what})")
    return checkpoint


# -- random states as plain values -----------------------------------------------------------

def _plain_rng_state(python: tuple, numpy_state: tuple, torch_state: torch.Tensor) -> dict[str, Any]:
    """``random.getstate()``, legacy ``np.random.get_state()`` and torch's state as plain values."""
    version, internal, gauss_next = python
    bit_generator, key, pos, has_gauss, gauss = numpy_state
    return dict(
        python=dict(version=version, internal=torch.tensor(internal, dtype=torch.int64),
                    gauss_next=gauss_next),
        numpy=dict(bit_generator=bit_generator, key=torch.from_numpy(key.astype(np.int64)),
                   pos=int(pos), has_gauss=int(has_gauss), gauss=float(gauss)),
        torch=torch_state,
    )


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states (CPU, and every CUDA device when there
    are any) as tensors, numbers and dicts."""
    state = _plain_rng_state(random.getstate(), np.random.get_state(), torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    np.random.set_state((numpy_state["bit_generator"], numpy_state["key"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- converting older checkpoints ------------------------------------------------------------

class _OldFormatUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals older checkpoints hold; anything else fails."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _OLD_NUMPY_GLOBALS | _TORCH_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint")
        return super().find_class(module, name)


def _old_format_load(file, **kwargs) -> Any:
    return _OldFormatUnpickler(file, **kwargs).load()


#: ``torch.load`` takes a pickle module; in this one every entry point is the restricted one.
_OLD_FORMAT_PICKLE = types.SimpleNamespace(Unpickler=_OldFormatUnpickler, load=_old_format_load,
                                           __name__="dgl_iflow_old_format_pickle")


def convert_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rewrite an older training checkpoint so that :func:`read_checkpoint` accepts it.

    The source is unpickled with an unpickler that resolves only the types such files hold
    (torch's state-dict pieces and NumPy arrays), so converting an unknown file runs no code
    from it either; the random states are stored as tensors and numbers, and the result is
    written atomically to ``target`` (which may be ``source``).

    Raises
    ------
    CheckpointError
        If the source holds anything else, or is no dgl_iflow checkpoint.
    """
    if Path(source).is_dir():
        raise CheckpointError(f"{source} is a folder, not a dgl_iflow checkpoint")
    if not Path(source).is_file():
        raise FileNotFoundError(f"no checkpoint at {source}")
    if not zipfile.is_zipfile(source):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{source} is not a torch.save archive, so no dgl_iflow checkpoint")
    try:
        old = torch.load(source, map_location="cpu", weights_only=False,
                         pickle_module=_OLD_FORMAT_PICKLE)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint {source} holds objects an older dgl_iflow checkpoint "
                              f"never held, refused: {err}") from None
    if not isinstance(old, dict) or "state_dict" not in old:
        raise CheckpointError(f"{source} is not a dgl_iflow checkpoint (no state_dict entry)")
    converted = dict(old)
    rng = old.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):
        converted["rng"] = _plain_rng_state(rng["python"], rng["numpy"], rng["torch"])
    # The target is a name the user typed: a mistyped folder is an error, not created.
    atomic_write(target, lambda file: torch.save(converted, file))
