"""Data sets of node features X and node labels Y on a fixed graph.

Load any of them by name::

    from dgl_iflow.data import load_dataset
    moons = load_dataset("three_moons", n=1000, seed=1)
    traffic = load_dataset("traffic", root="/path/to/data")
    x_train, y_train = traffic.split("train")   # (3070, 15, 2), (3070, 15)

Real data sets (``traffic``, ``solar``) read files from a data root: the ``root`` argument, else
``$DGL_IFLOW_DATA``, else ``~/.dgl_iflow/data``. Missing files are downloaded there on first use
from the public repositories they are published in, and checked (size and sha256) before they
are kept; ``download_dataset`` fetches them ahead. See ``docs/datasets.md``.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from . import solar as _solar_module
from . import traffic as _traffic_module
from .base import DataFileError, DataRoot, FileReport, GraphDataset, holdout, resolve_root, verify_files
from .download import fetch_files
from .solar import solar
from .synthetic import chordal, continuous_chordal, three_node
from .toys import checkerboard, eight_gaussians, rose, three_moons, tree
from .traffic import traffic

__all__ = [
    "DataFileError", "DataRoot", "FileReport", "GraphDataset", "checkerboard", "chordal", "continuous_chordal",
    "dataset_targets", "download_dataset", "eight_gaussians", "holdout", "list_datasets", "load_dataset", "real_datasets",
    "resolve_root", "rose", "solar", "three_moons", "three_node", "traffic", "tree",
    "verify_dataset",
]

_LOADERS: dict[str, Callable[..., GraphDataset]] = {
    "three_moons": three_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "rose": rose,
    "tree": tree,
    "three_node": three_node,
    "chordal": chordal,
    "continuous_chordal": continuous_chordal,
    "traffic": traffic,
    "solar": solar,
}

#: Data sets read from files: name -> loader module, whose FOLDER and FILES list them.
_REAL_MODULES = {"traffic": _traffic_module, "solar": _solar_module}


def _check_name(name: str, valid: list[str]) -> None:
    if name not in valid:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(valid)}")


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, synthetic ones first."""
    return list(_LOADERS)


def real_datasets() -> list[str]:
    """Names of the data sets read from files (the others are generated)."""
    return list(_REAL_MODULES)


def _real_module(name: str):
    _check_name(name, list_datasets())
    if name not in _REAL_MODULES:
        raise ValueError(f"data set {name!r} is generated and has no files; data sets read "
                         f"from files: {', '.join(_REAL_MODULES)}")
    return _REAL_MODULES[name]


def dataset_targets(name: str) -> tuple[str, ...]:
    """What the loader of ``name`` can label the nodes with (its ``target=`` values, the default
    first); empty for a data set with one kind of label."""
    _check_name(name, list_datasets())
    return getattr(_REAL_MODULES.get(name), "TARGETS", ())


def load_dataset(name: str, **kwargs) -> GraphDataset:
    """Build or load the data set ``name``; ``kwargs`` go to its loader (e.g. ``seed``, ``root``).

    Raises
    ------
    ValueError
        If ``name`` is not one of ``list_datasets()``.
    """
    _check_name(name, list_datasets())
    return _LOADERS[name](**kwargs)


def verify_dataset(name: str, root: str | os.PathLike | None = None) -> dict[str, FileReport]:
    """Check a real data set's files against their published sizes and sha256 checksums.

    Never raises for bad files: each report says ``ok``, ``missing``, ``size mismatch`` or
    ``checksum mismatch``.

    Parameters
    ----------
    name : str
        ``"traffic"`` or ``"solar"``.
    root : str or PathLike, optional
        Data root; default ``$DGL_IFLOW_DATA``, else ``~/.dgl_iflow/data``.

    Returns
    -------
    dict[str, FileReport]
        One report per published file name.
    """
    module = _real_module(name)
    return verify_files(module.FOLDER, module.FILES, root)


def download_dataset(name: str, root: str | os.PathLike | None = None, *,
                     mirror: str | None = None, replace: bool = False,
                     progress: bool = True) -> dict[str, FileReport]:
    """Download a real data set's missing files into the data root, checked, ahead of use.

    Parameters
    ----------
    name : str
        ``"traffic"`` or ``"solar"``.
    root : str or PathLike, optional
        Data root; default ``$DGL_IFLOW_DATA``, else ``~/.dgl_iflow/data``.
    mirror : str, optional
        Base URL serving ``<folder>/<file name>`` instead of the published sources; default
        ``$DGL_IFLOW_DATA_URL``, else none.
    replace : bool
        Also download the files present with another size or checksum, over them.
    progress : bool
        Show a progress bar per file.

    Returns
    -------
    dict[str, FileReport]
        One report per published file name, after the downloads.

    Raises
    ------
    DataFileError
        If a download fails: the message names the file and URL, and which files to put into
        which folder by hand.
    """
    module = _real_module(name)
    return fetch_files(module.FOLDER, module.FILES, root, mirror=mirror, replace=replace,
                       progress=progress)
