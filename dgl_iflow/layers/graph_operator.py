"""Graph operators as torch tensors, built once from a ``DGLGraph``.

DGL's ``update_all`` costs 4-6x more than a torch matmul for the small graphs and many
samples of this library (measured in ``benchmarks/layers.py``), ``torch.func`` cannot
differentiate through DGL's operators, and DGL's PyPI build has no CUDA. So layers read
the graph structure once and apply it as a dense ``(R, V)`` matrix (small graphs) or a sparse
COO matrix (large graphs); both follow ``.to(device)`` and autograd.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._backend import dgl

#: Graphs with at most this many nodes use dense operators; larger ones use sparse COO.
DENSE_MAX_NODES = 256


def use_sparse(num_nodes: int) -> bool:
    """Whether a graph of ``num_nodes`` nodes gets a sparse operator."""
    return num_nodes > DENSE_MAX_NODES


def operator_matrix(row: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """Matrix with ``values`` summed at ``(row, col)``, dense or sparse by the node count.

    Differentiable with respect to ``values``.
    """
    if use_sparse(shape[1]):
        return torch.sparse_coo_tensor(torch.stack([row, col]), values, shape).coalesce()
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return dense.index_put((row, col), values, accumulate=True)


def node_matmul(matrix: Tensor, feat: Tensor) -> Tensor:
    """Apply a ``(R, V)`` operator along the node axis of ``feat`` of shape ``(V, *, C)``.

    Returns a tensor of shape ``(R, *, C)``.
    """
    flat = feat.reshape(feat.shape[0], -1)
    out = torch.sparse.mm(matrix, flat) if matrix.is_sparse else matrix @ flat
    return out.reshape(matrix.shape[0], *feat.shape[1:])


def dense_matrix(matrix: Tensor) -> Tensor:
    """The dense form of a dense or sparse operator."""
    return matrix.to_dense() if matrix.is_sparse else matrix


def check_features(graph: dgl.DGLGraph, feat: Tensor, in_feats: int, layer: str) -> None:
    """Raise ``ValueError`` unless ``feat`` has shape ``(V, *, in_feats)`` for ``graph``."""
    if feat.dim() < 2 or feat.shape[0] != graph.num_nodes() or feat.shape[-1] != in_feats:
        raise ValueError(
            f"{layer} expects features of shape (V, *, {in_feats}) with V = {graph.num_nodes()} "
            f"nodes of the graph, got {tuple(feat.shape)}"
        )


class GraphMemo:
    """One value remembered per graph object, held weakly, and a key such as device and dtype.

    A graph that is garbage-collected, or mutated in place so that its node or edge count
    changes, misses the memo. The memo is dropped on pickling and copying.
    """

    def __init__(self) -> None:
        self.clear()

    def get(self, graph: dgl.DGLGraph, key: tuple, build: Callable[[], Any]) -> Any:
        """The value remembered for ``graph`` and ``key``, built and remembered if missing."""
        key = (graph.num_nodes(), graph.num_edges(), *key)
        if self._graph_ref is None or self._graph_ref() is not graph or self._key != key:
            self._value = build()
            self._graph_ref = weakref.ref(graph)
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key: tuple | None = None
        self._graph_ref: weakref.ref | None = None
        self._value: Any = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()
