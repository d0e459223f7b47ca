"""Writing files so that none is ever half-written, and replacing whole run folders.

Every file the library and the ``dgl-iflow`` command write (checkpoints, JSON, CSV, NumPy
arrays, figures) goes through :func:`atomic_write`: the bytes go to a hidden temporary file in
the target's folder, which is renamed over the target only once it is complete. An error, an
interrupt or a full disk at any point leaves the previous file at the target as it was, and no
temporary file behind. Files are created with mode ``0o666`` less the process's umask (0644
under the usual umask 022), like any file a program opens for writing.

:func:`replacing_folder` does the same for a whole folder: a new run is built in a temporary
sibling folder, which replaces the old one only once the run has finished.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "json_text", "replacing_folder", "save_figure"]

#: Attempts at a fresh random name before giving up (a collision of 32 random bits is rare).
_NAME_ATTEMPTS = 100


def _fresh_sibling(path: Path, tag: str, create: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``create(candidate)`` for a new hidden name ``.NAME.TAG-XXXXXXXX`` beside ``path``.

    ``create`` must fail with ``FileExistsError`` when the name is taken; it then gets another.
    """
    for _ in range(_NAME_ATTEMPTS):
        candidate = path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}"
        try:
            return candidate, create(candidate)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary name beside {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    Parameters
    ----------
    path : path
        The file to write; its folder must exist (a mistyped folder is an error, not created).
    write : callable
        Writes the whole content into the open file it is given.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    FileNotFoundError
        If the folder of ``path`` does not exist; the message names it.
    OSError
        If writing or renaming fails; whatever was at ``path`` is then left as it was.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"cannot write {path}: {folder} {what}")
    # os.open with 0o666 lets the kernel apply the umask, as open() does for any new file;
    # tempfile.mkstemp would create it 0600, and the rename would keep that.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    temporary, handle = _fresh_sibling(path, "tmp", lambda name: os.open(name, flags, 0o666))
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(folder)
    return path


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: a crash right after it keeps the new name."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without folder handles
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(handle)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda file: file.write(data))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as indented JSON, every infinite or NaN float written ``null``: JSON has no such
    numbers, and Python's ``Infinity`` is not JSON that other readers take."""
    return json.dumps(_finite_or_none(value), indent=2, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as :func:`json_text`, with a final newline, to ``path`` atomically."""
    return atomic_write_text(path, json_text(value) + "\n")


def save_figure(figure: Figure, path: str | os.PathLike, **savefig: Any) -> Path:
    """``figure.savefig`` to ``path`` atomically, in the format its suffix names (``.png``, ``.pdf``, ...).

    ``savefig`` passes on keywords such as ``dpi``; the figure itself is not changed.
    """
    path = Path(path)
    file_format = savefig.pop("format", None) or path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda file: figure.savefig(file, format=file_format, **savefig))


@contextmanager
def replacing_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new, empty folder beside ``target`` to build into; it becomes ``target`` only on success.

    When the block ends normally, whatever was at ``target`` is moved aside, the new folder is
    renamed to ``target`` and the old one is deleted: the target holds the old folder or the
    new one, never a mix (between the two renames it is briefly absent; a crash exactly there
    leaves the old run whole under the hidden name ``.NAME.old-XXXXXXXX``). When the block
    raises (an error or an interrupt), the new folder is deleted and ``target`` is left as it
    was.

    Yields
    ------
    Path
        The temporary folder, a hidden sibling of ``target`` (so the rename stays on one file
        system), created with mode ``0o777`` less the umask.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging, _ = _fresh_sibling(target, "new", lambda name: os.mkdir(name, 0o777))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    def move_aside(name: Path) -> None:
        if name.exists():  # os.rename would replace an empty folder of that name
            raise FileExistsError(name)
        os.rename(target, name)

    old = None
    try:
        if target.exists():
            old, _ = _fresh_sibling(target, "old", move_aside)
        os.rename(staging, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _sync_folder(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
