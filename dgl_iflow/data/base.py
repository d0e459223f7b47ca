"""The data-set container shared by every loader, and the checks that guard real data files.

``GraphDataset`` is a plain class rather than a ``dgl.data.DGLDataset`` subclass: DGLDataset's
constructor creates folders under ``raw_dir`` (or ``~/.dgl``) as a side effect, while a data
root may be a read-only shared folder that is written only when a file is missing
(``download.py``), and its ``__getitem__`` convention (one graph per item) does not fit data sets
whose samples all share one graph. The class keeps DGLDataset's vocabulary (``name``,
``raw_dir``, ``raw_path``, ``__len__``, ``__getitem__``) so it reads the same way.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import graphs
from ..graphs import GraphLike, as_graph

#: Environment variable naming the data root when no ``root`` argument is given.
DATA_ENV_VAR = "DGL_IFLOW_DATA"
#: Data root used when neither a ``root`` argument nor ``DGL_IFLOW_DATA`` is given.
DEFAULT_ROOT = Path("~/.dgl_iflow/data")

SPLITS = ("train", "test")


class DataFileError(RuntimeError):
    """A real data file is missing, truncated, corrupted or not in the expected format."""


@dataclass(frozen=True)
class DataRoot:
    """Folder holding one subfolder per real data set, and how it was chosen.

    Attributes
    ----------
    path : Path
        The resolved folder.
    source : str
        ``"argument"``, ``"DGL_IFLOW_DATA"`` or ``"default"``.
    """

    path: Path
    source: str

    def describe(self) -> str:
        """One phrase for error messages, e.g. ``"/data (from DGL_IFLOW_DATA)"``."""
        return f"{self.path} (from {self.source})"


@dataclass(frozen=True)
class DataFile:
    """A published data file: its name inside the data-set folder, byte size, sha256 and URL.

    ``url`` is where the file is downloaded from (a raw file of a public repository at a fixed
    commit); ``None`` for files with no public source, which must be put in place by hand.
    """

    name: str
    size: int
    sha256: str
    url: str | None = None


@dataclass(frozen=True)
class FileReport:
    """Outcome of checking one data file against its published size and sha256.

    ``status`` is ``"ok"``, ``"missing"``, ``"size mismatch"`` or ``"checksum mismatch"``;
    ``actual_sha256`` is only computed when the size matches. ``url`` is the published source.
    """

    name: str
    path: Path
    status: str
    expected_size: int
    actual_size: int | None
    expected_sha256: str
    actual_sha256: str | None
    url: str | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def resolve_root(root: DataRoot | str | os.PathLike | None = None) -> DataRoot:
    """Pick the data root: the ``root`` argument, else ``$DGL_IFLOW_DATA``, else the default.

    Parameters
    ----------
    root : DataRoot, str or PathLike, optional
        Explicit data root; wins over everything else. A ``DataRoot`` is returned as it is.

    Returns
    -------
    DataRoot
        The expanded path and which rule chose it.
    """
    if isinstance(root, DataRoot):
        return root
    if root is not None:
        return DataRoot(Path(root).expanduser(), "argument")
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        return DataRoot(Path(from_env).expanduser(), DATA_ENV_VAR)
    return DataRoot(DEFAULT_ROOT.expanduser(), "default")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large files need no extra memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_file(folder: Path, spec: DataFile) -> FileReport:
    """Compare ``folder / spec.name`` with its published size and checksum."""
    path = folder / spec.name
    if not path.is_file():
        return FileReport(spec.name, path, "missing", spec.size, None, spec.sha256, None,
                          spec.url)
    size = path.stat().st_size
    if size != spec.size:
        return FileReport(spec.name, path, "size mismatch", spec.size, size, spec.sha256, None,
                          spec.url)
    digest = sha256_of(path)
    status = "ok" if digest == spec.sha256 else "checksum mismatch"
    return FileReport(spec.name, path, status, spec.size, size, spec.sha256, digest, spec.url)


def verify_files(folder_name: str, specs: tuple[DataFile, ...],
                 root: str | os.PathLike | None = None) -> dict[str, FileReport]:
    """Check every published file of one data set; never raises for bad files.

    Returns
    -------
    dict[str, FileReport]
        One report per file name, in the order of ``specs``.
    """
    folder = resolve_root(root).path / folder_name
    return {spec.name: inspect_file(folder, spec) for spec in specs}


def require_exists(path: Path, root: DataRoot) -> Path:
    """Return ``path``, raising ``DataFileError`` (naming folder and root) if it is no file."""
    if not path.is_file():
        raise DataFileError(f"data file {path.name} not found in folder {path.parent} (data "
                            f"root {root.describe()})")
    return path


_REPLACE_HINT = "`dgl-iflow datasets --replace` downloads the published file over it"


def require_file(folder: Path, spec: DataFile, root: DataRoot, verify: bool) -> Path:
    """Return the path of a data file, raising ``DataFileError`` unless it is usable.

    Parameters
    ----------
    folder : Path
        Data-set folder the file must be in.
    spec : DataFile
        Published name, size and checksum.
    root : DataRoot
        The root ``folder`` lies in; named in error messages.
    verify : bool
        Check size and sha256; without it only presence is checked.
    """
    where = f"in folder {folder} (data root {root.describe()})"
    expected = f"expected {spec.size} bytes with sha256 {spec.sha256}"
    if not verify:
        return require_exists(folder / spec.name, root)
    report = inspect_file(folder, spec)
    if report.status == "missing":
        raise DataFileError(
            f"data file {spec.name} not found {where}; {expected}. Set the root with the "
            f"`root` argument or {DATA_ENV_VAR}, download the files with `dgl-iflow datasets "
            f"--download`, or see docs/datasets.md")
    if report.status == "size mismatch":
        raise DataFileError(
            f"data file {spec.name} {where} has {report.actual_size} bytes (truncated or "
            f"replaced); {expected}. {_REPLACE_HINT}")
    if report.status == "checksum mismatch":
        raise DataFileError(
            f"data file {spec.name} {where} is corrupted: sha256 {report.actual_sha256}; "
            f"{expected}. {_REPLACE_HINT}")
    return report.path


def sorted_graph(src: Tensor, dst: Tensor, num_nodes: int) -> GraphLike:
    """Build a graph whose edges ``src -> dst`` are deduplicated and sorted by ``(dst, src)``, in
    the form of :func:`dgl_iflow.graphs.graph_from_edges` (a ``DGLGraph`` where DGL imports).

    Sorting makes the edge ids independent of the order edges were generated in.
    """
    pairs = torch.unique(torch.stack([dst, src], dim=1), dim=0)  # sorts rows lexicographically
    return graphs.graph_from_edges(pairs[:, 1], pairs[:, 0], num_nodes)


def undirected_graph(pairs: list[tuple[int, int]], num_nodes: int,
                     self_loops: bool) -> GraphLike:
    """Symmetric graph with both directions of every pair, optionally a self-loop per node."""
    edges = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    if self_loops:
        nodes = torch.arange(num_nodes)
        src, dst = torch.cat([src, nodes]), torch.cat([dst, nodes])
    return sorted_graph(src, dst, num_nodes)


def stratified_split(groups: Tensor, test_fraction: float,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random train/test split that keeps each group's share in both parts.

    Parameters
    ----------
    groups : Tensor
        Shape (N,), integer group of each sample (a class or a label vector).
    test_fraction : float
        Share of each group sent to the test part, rounded per group.
    generator : torch.Generator
        Source of randomness, so the split follows the data set's seed.

    Returns
    -------
    train_idx, test_idx : Tensor
        Sorted int64 indices into N.
    """
    test_parts = []
    for group in torch.unique(groups):
        members = torch.nonzero(groups == group).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        test_parts.append(shuffled[: round(test_fraction * len(members))])
    is_test = torch.zeros(len(groups), dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def holdout(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A seeded random share of the samples held out, for validation.

    Parameters
    ----------
    x, y : Tensor
        Shapes (N, V, d) and (N, V), sample-first.
    fraction : float
        Share of the N samples held out, in (0, 1); at least one sample.
    seed : int
        Seed of the permutation, so one seed holds out the same samples.

    Returns
    -------
    (x_kept, y_kept), (x_held, y_held) : tuple of tuples of Tensor
        The rest, and the held-out samples.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in (0, 1); got {fraction}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    count = max(1, round(fraction * len(x)))
    held, kept = order[:count], order[count:]
    return (x[kept], y[kept]), (x[held], y[held])


class GraphDataset:
    """Samples of node features and node labels on one shared graph.

    Parameters
    ----------
    name : str
        Registry name of the data set.
    graph : GraphLike
        Shared graph with V nodes; an edge ``src -> dst`` means ``dst`` aggregates ``src``.
    x : Tensor
        Shape (N, V, d), node features (converted to float32).
    y : Tensor
        Shape (N, V), node labels in ``[0, num_classes)`` (converted to int64); or, with
        ``num_classes=None``, real-valued targets (N, V) or (N, V, q) (converted to float32).
    train_idx, test_idx : Tensor
        int64 indices into N.
    num_classes : int or None
        Number of label values; ``None`` for real-valued targets.
    node_names : list[str]
        V names, in node-id order.
    feature_names : list[str]
        d names, in feature order.
    info : dict
        How the data set was built: parameters, seeds, scaler statistics, source files.
    raw_path : Path, optional
        Folder of the real data files, ``None`` for synthetic data sets.
    """

    def __init__(self, name: str, graph: GraphLike, x: Tensor, y: Tensor,
                 train_idx: Tensor, test_idx: Tensor, num_classes: int | None,
                 node_names: list[str], feature_names: list[str], info: dict[str, Any],
                 raw_path: Path | None = None) -> None:
        x = x.to(torch.float32)
        y = y.to(torch.int64 if num_classes is not None else torch.float32)
        label_dims = (2,) if num_classes is not None else (2, 3)
        if x.dim() != 3 or y.dim() not in label_dims or y.shape[:2] != x.shape[:2]:
            layout = "(N, V)" if num_classes is not None else "(N, V) or (N, V, q)"
            raise ValueError(f"x must be (N, V, d) and y {layout}; got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        num_nodes = x.shape[1]
        graph_nodes = as_graph(graph).num_nodes()
        if graph_nodes != num_nodes or len(node_names) != num_nodes:
            raise ValueError(f"graph has {graph_nodes} nodes and {len(node_names)} "
                             f"names but x has V = {num_nodes}")
        if len(feature_names) != x.shape[2]:
            raise ValueError(f"{len(feature_names)} feature names for d = {x.shape[2]}")
        if num_classes is None:
            if not bool(torch.isfinite(y).all()):
                raise ValueError("targets must be finite, got NaN or infinite values")
        elif y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes})")
        self.name = name
        self.graph = graph
        self.x = x
        self.y = y
        self.train_idx = train_idx.to(torch.int64)
        self.test_idx = test_idx.to(torch.int64)
        self.num_classes = num_classes
        self.node_names = node_names
        self.feature_names = feature_names
        self.info = info
        self.raw_path = raw_path

    @property
    def raw_dir(self) -> Path | None:
        """Data root the real files were read from (DGLDataset's name for it)."""
        return None if self.raw_path is None else self.raw_path.parent

    @property
    def num_nodes(self) -> int:
        """V, the number of graph nodes."""
        return self.x.shape[1]

    @property
    def num_features(self) -> int:
        """d, the number of features per node."""
        return self.x.shape[2]

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """Features (n, V, d) and labels (n, V) (targets: (n, V[, q])) of the ``"train"`` or ``"test"`` part."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        idx = self.train_idx if name == "train" else self.test_idx
        return self.x[idx], self.y[idx]

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Features (V, d) and labels (V,) of sample ``index``."""
        return self.x[index], self.y[index]

    def __repr__(self) -> str:
        return (f'GraphDataset("{self.name}", N={len(self)}, V={self.num_nodes}, '
                f"d={self.num_features}, "
                f"{'targets=real' if self.num_classes is None else f'classes={self.num_classes}'}, "
                f"train={len(self.train_idx)}, test={len(self.test_idx)})")
