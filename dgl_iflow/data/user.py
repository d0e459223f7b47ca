"""Your own data set from files: node features, node labels and a graph, as ``dgl-iflow train --data`` reads them.

A data file is a NumPy ``.npz`` archive (``np.savez``) or a ``torch.save`` ``.pt`` file of a dict
of tensors, with the entries

``x``
    ``(N, V, d)`` real node features: N samples of d features on each of the V nodes.
``y``
    ``(N, V)`` node labels, whole numbers from 0; the classes are ``0 .. max(y)``. With
    ``target="real"`` (``dgl-iflow train --target real``): real-valued targets ``(N, V)`` or
    ``(N, V, q)``, kept in their own units.
``edge_index`` (unless the edges come in their own file)
    ``(2, E)`` integer node ids in ``[0, V)``: row 0 the sources, row 1 the targets. An edge
    ``src -> dst`` means that ``dst`` aggregates ``src``; list both directions (or pass
    ``undirected=True``) for an undirected graph, and ``v -> v`` for a node to see itself.
``split`` (optional)
    ``(N,)`` 0 for a training sample and 1 for a test sample (booleans: ``True`` for test; in a
    ``.npz`` also the strings ``"train"`` and ``"test"``). Without it a seeded random
    ``test_fraction`` of the samples is the test part, the same one on every load.
``node_names``, ``feature_names`` (optional, ``.npz`` string arrays or ``.pt`` lists of str)
    V and d names, used for headers and figures.

An edge-list file holds one edge per line, two whitespace-separated integer node ids ``src
dst``; everything from ``#`` to the end of a line is a comment.

Features are standardized per node and feature with the mean and standard deviation of the
training part (recorded in ``info["scaler"]``, as the real data sets do; see
:mod:`~dgl_iflow.data.scaling`), so that the recipe's latent scale fits any data.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DataFileError, GraphDataset

__all__ = ["DATA_SUFFIXES", "USER_TARGETS", "load_graph_data", "read_edge_list"]

#: What a data file may end in.
DATA_SUFFIXES = (".npz", ".pt")
#: What ``y`` of a data file may hold (``load_graph_data(target=...)``).
USER_TARGETS = ("classes", "real")


def read_edge_list(path: str | os.PathLike) -> np.ndarray:
    """The ``(2, E)`` int64 edges of an edge-list text file (``src dst`` per line, ``#`` comments).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    DataFileError
        If a line is not two integers, or the file lists no edge; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no edge-list file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    pairs: list[tuple[int, int]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataFileError(f"edge-list file {path} is not text: expected lines 'src dst' of two integer "
                            f"node ids") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            pairs.append((int(fields[0]), int(fields[1])))
        except ValueError:
            raise DataFileError(f"edge-list file {path}, line {number}: expected two whitespace-separated "
                                f"integer node ids 'src dst', got {line.strip()[:60]!r}") from None
    if not pairs:
        raise DataFileError(f"edge-list file {path} lists no edges: expected lines 'src dst' of two integer "
                            f"node ids")
    return np.asarray(pairs, dtype=np.int64).T


def _read_entries(path: Path) -> Mapping[str, Any]:
    """The named entries of a ``.npz`` or ``.pt`` data file, read without running code from it."""
    if path.suffix not in DATA_SUFFIXES:
        raise ValueError(f"data file {path} must end in {' or '.join(DATA_SUFFIXES)} (a NumPy .npz archive or "
                         f"a torch.save dict of tensors), not {path.suffix or 'no suffix'!r}")
    if path.is_dir():
        raise FileNotFoundError(f"no data file at {path} (it is a folder)")
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:  # pickled objects could run code
                return {key: archive[key] for key in archive.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise DataFileError(f"data file {path} is not a readable NumPy .npz archive of arrays ({reason})") \
                from None
    if not zipfile.is_zipfile(path):
        raise DataFileError(f"data file {path} is not a torch.save file (not a torch zip archive)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many types; its advice to load unsafely is dropped)
        raise DataFileError(f"data file {path} could not be read as a torch.save dict of tensors, lists and "
                            f"numbers ({type(err).__name__})") from None
    if not isinstance(content, Mapping):
        raise DataFileError(f"data file {path} holds a {type(content).__name__}, not a dict with entries x, y "
                            f"and edge_index")
    return content


def _numeric(value: Any, path: Path, key: str) -> np.ndarray:
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise DataFileError(f"data file {path}: {key} must hold numbers, got dtype {array.dtype}")
    return array


def _whole(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``array`` as int64, refusing fractions and non-finite values rather than rounding them."""
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise DataFileError(f"data file {path}: {key} must hold whole numbers, found fractions or "
                                f"non-finite values")
    return array.astype(np.int64)


def _names(value: Any, count: int, path: Path, key: str) -> list[str] | None:
    if value is None:
        return None
    names = [str(name) for name in (value.tolist() if hasattr(value, "tolist") else value)]
    if len(names) != count:
        raise DataFileError(f"data file {path}: {key} has {len(names)} names for {count} entries")
    return names


def _split(value: Any, num_samples: int, test_fraction: float, seed: int, path: Path) -> tuple[np.ndarray, str]:
    """Whether each sample is a test sample, and how that was decided."""
    if value is not None:
        array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.dtype.kind in "US":
            words = np.char.lower(array.astype(str))
            if not np.isin(words, ("train", "test")).all():
                raise DataFileError(f"data file {path}: split must say 'train' or 'test' per sample")
            is_test = words == "test"
        else:
            codes = _whole(_numeric(array, path, "split"), path, "split")
            if not np.isin(codes, (0, 1)).all():
                raise DataFileError(f"data file {path}: split must be 0 (train) or 1 (test) per sample, found "
                                    f"{sorted(set(codes.ravel().tolist()) - {0, 1})[:5]}")
            is_test = codes == 1
        if is_test.shape != (num_samples,):
            raise DataFileError(f"data file {path}: split must have shape (N,) = ({num_samples},), got "
                                f"{tuple(is_test.shape)}")
        return is_test, "the file's split entry"
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"the test fraction must lie in (0, 1); got {test_fraction}")
    count = min(max(1, round(test_fraction * num_samples)), num_samples - 1)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed)).numpy()
    is_test = np.zeros(num_samples, dtype=bool)
    is_test[order[:count]] = True
    return is_test, f"a random {test_fraction:g} of the samples (seed {seed})"


def load_graph_data(
    path: str | os.PathLike, edges: str | os.PathLike | None = None, *, undirected: bool = False,
    test_fraction: float = 0.2, seed: int = 0, target: str = "classes",
) -> GraphDataset:
    """Read a data set of your own: features, labels and a graph (module docstring for the formats).

    Parameters
    ----------
    path : path
        ``.npz`` or ``.pt`` file with ``x``, ``y``, optionally ``edge_index``, ``split``,
        ``node_names`` and ``feature_names``.
    edges : path, optional
        Edge-list text file; required unless ``path`` holds ``edge_index`` (not both).
    undirected : bool
        Add ``dst -> src`` for every edge ``src -> dst``.
    test_fraction : float
        Share of the samples in the test part when ``path`` has no ``split``.
    seed : int
        Seed of that random test part.
    target : {"classes", "real"}
        What ``y`` holds: class labels, whole numbers from 0 (``(N, V)``), or real-valued targets
        (``(N, V)`` or ``(N, V, q)``, finite; kept in their own units), for a model of
        ``latent="linear_gaussian"``.

    Returns
    -------
    GraphDataset
        Named after the file; features standardized with the training part's statistics
        (``info["scaler"]``), duplicate edges dropped.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    DataFileError
        If an entry is missing or malformed; the message names the file and the entry.
    ValueError
        For a bad suffix or ``test_fraction``.
    """
    from ..graphs import as_graph
    from .base import sorted_graph

    path = Path(path)
    entries = _read_entries(path)
    missing = [key for key in ("x", "y") if key not in entries]
    if missing:
        raise DataFileError(f"data file {path} has no {' and no '.join(missing)} entry; it has "
                            f"{', '.join(sorted(entries)) or 'none'} (expected x (N, V, d), y (N, V), edge_index "
                            f"(2, E) or --edges)")
    x = _numeric(entries["x"], path, "x").astype(np.float64)
    if x.ndim != 3 or 0 in x.shape:
        raise DataFileError(f"data file {path}: x must have shape (N, V, d) with N, V, d >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise DataFileError(f"data file {path}: x holds NaN or infinite values")
    num_samples, num_nodes, num_features = x.shape
    if num_samples < 2:
        raise DataFileError(f"data file {path}: x has {num_samples} sample; a training and a test part need 2")
    if target not in USER_TARGETS:
        raise ValueError(f"target must be one of {USER_TARGETS}, got {target!r}")
    if target == "real":
        y = _numeric(entries["y"], path, "y").astype(np.float64)
        if y.shape[:2] != x.shape[:2] or y.ndim not in (2, 3):
            raise DataFileError(f"data file {path}: real-valued targets y must have shape (N, V) = {x.shape[:2]} or "
                                f"(N, V, q) like x, got {y.shape}")
        if not np.isfinite(y).all():
            raise DataFileError(f"data file {path}: y holds NaN or infinite values")
        num_classes = None
    else:
        y = _whole(_numeric(entries["y"], path, "y"), path, "y")
        if y.shape != x.shape[:2]:
            raise DataFileError(f"data file {path}: y must have shape (N, V) = {x.shape[:2]} like x, got {y.shape}")
        if y.min() < 0:
            raise DataFileError(f"data file {path}: labels y must be whole numbers from 0, found {int(y.min())}")
        num_classes = int(y.max()) + 1
        if num_classes < 2:
            raise DataFileError(f"data file {path}: y holds the single label 0; a conditional model needs two "
                                f"classes or more (or pass target=\"real\" for real-valued targets)")

    if ("edge_index" in entries) == (edges is not None):
        raise ValueError(f"give the graph once: as an edge_index entry of {path} or as an edge-list file, "
                         f"{'not both' if edges is not None else 'but there is neither'}")
    if edges is None:
        edge_index = _whole(_numeric(entries["edge_index"], path, "edge_index"), path, "edge_index")
        source = f"{path}: edge_index"
        if edge_index.ndim != 2 or edge_index.shape[0] != 2 or edge_index.shape[1] == 0:
            raise DataFileError(f"data file {path}: edge_index must have shape (2, E) with E >= 1, got "
                                f"{edge_index.shape}")
    else:
        edge_index = read_edge_list(edges)
        source = f"edge-list file {edges}"
    if edge_index.min() < 0 or edge_index.max() >= num_nodes:
        raise DataFileError(f"{source}: node ids must lie in [0, {num_nodes}) for the V = {num_nodes} nodes of x, "
                            f"found {int(edge_index.min())}..{int(edge_index.max())}")
    src, dst = torch.from_numpy(edge_index[0]), torch.from_numpy(edge_index[1])
    if undirected:
        src, dst = torch.cat([src, dst]), torch.cat([dst, src])
    graph = sorted_graph(src, dst, num_nodes)  # as the built-in data sets' graphs are

    is_test, split_rule = _split(entries.get("split"), num_samples, test_fraction, seed, path)
    if is_test.all() or not is_test.any():
        raise DataFileError(f"data file {path}: split puts every sample in one part; both the training and the "
                            f"test part need samples")
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    fit_on = x[train_idx]
    mean, std = fit_on.mean(axis=0), fit_on.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant feature stays centred rather than dividing by 0
    node_names = _names(entries.get("node_names"), num_nodes, path, "node_names") or \
        [str(node) for node in range(num_nodes)]
    feature_names = _names(entries.get("feature_names"), num_features, path, "feature_names") or \
        [f"x{feature + 1}" for feature in range(num_features)]
    info = {
        "files": [str(path)] + ([] if edges is None else [str(edges)]),
        "graph": f"{as_graph(graph).num_edges()} edges from {source}" + (", both directions" if undirected else ""),
        "split": split_rule,
        "target": target,
        "scaler": {"fit_on": "training part, per node and feature", "ddof": 0, "mean": mean.tolist(),
                   "std": std.tolist()},
    }
    return GraphDataset(
        name=path.name, graph=graph, x=torch.from_numpy((x - mean) / std), y=torch.from_numpy(y),
        train_idx=torch.from_numpy(train_idx), test_idx=torch.from_numpy(test_idx), num_classes=num_classes,
        node_names=node_names, feature_names=feature_names, info=info)
