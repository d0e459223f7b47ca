"""Graph operators as torch tensors, built once from a ``DGLGraph``.

DGL's ``update_all`` costs 5-20x more than a dense torch matmul for the small graphs and
many samples of this library (measured in ``benchmarks/layers.py``), ``torch.func`` cannot
differentiate through DGL's operators, and DGL's PyPI build has no CUDA. So layers read
the graph structure once and apply it as a dense ``(R, V)`` matrix (small graphs) or a sparse
COO matrix (large graphs); both follow ``.to(device)`` and autograd.

The switch from dense to sparse is where ``benchmarks/layers.py`` measured sparse to become
faster on features ``(V, 200, 2)``, forward + backward (``docs/layers.md``): at about 64-90
nodes for an operator with fixed values (ChebConv's Laplacian), and only at 300-500 nodes for
one with learnable values (L3Conv's filters), whose sparse gradient gathers every non-zero.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._backend import dgl

#: Graphs with at most this many nodes get dense operators with fixed values; larger ones
#: get sparse COO ones.
DENSE_MAX_NODES = 64
#: The same threshold for operators whose values require grad.
DENSE_MAX_NODES_LEARNABLE = 384


def use_sparse(num_nodes: int, learnable: bool = False) -> bool:
    """Whether a graph of ``num_nodes`` nodes gets a sparse operator; ``learnable``: its values
    require grad."""
    return num_nodes > (DENSE_MAX_NODES_LEARNABLE if learnable else DENSE_MAX_NODES)


def operator_matrix(
    row: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int], *, coalesced: bool = False
) -> Tensor:
    """Matrix with ``values`` summed at ``(row, col)``, dense or sparse by the node count
    (and whether ``values`` requires grad, see :func:`use_sparse`).

    Differentiable with respect to ``values``. ``coalesced`` promises that the pairs are
    unique and sorted by ``(row, col)``, which skips the sort of the sparse form.
    """
    if use_sparse(shape[1], learnable=values.requires_grad):
        matrix = torch.sparse_coo_tensor(torch.stack([row, col]), values, shape, is_coalesced=coalesced)
        return matrix if coalesced else matrix.coalesce()
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return dense.index_put((row, col), values, accumulate=True)


def node_matmul(matrix: Tensor, feat: Tensor) -> Tensor:
    """Apply a ``(R, V)`` operator along the node axis of ``feat`` of shape ``(V, *, C)``.

    Returns a tensor of shape ``(R, *, C)``. A sparse operator whose values require grad
    goes through :class:`_SparseMatmul`, whose gradient costs one pass over the non-zeros.
    """
    flat = feat.reshape(feat.shape[0], -1)
    if not matrix.is_sparse:
        out = matrix @ flat
    elif matrix.requires_grad:
        row, col = matrix.indices()
        out = _SparseMatmul.apply(matrix.values(), flat, row, col, matrix.shape[0])
    else:
        out = torch.sparse.mm(matrix, flat)
    return out.reshape(matrix.shape[0], *feat.shape[1:])


class _SparseMatmul(torch.autograd.Function):
    r"""``S @ flat`` for ``S`` given by ``(row, col, values)``, differentiable in both, twice.

    ``torch.sparse.mm`` computes the gradient with respect to the sparse values through a
    dense ``(R, V)`` matrix: quadratic time and memory in the node count. Here that gradient is
    :math:`\partial L / \partial S_{rc} = \langle G_r, X_c \rangle` on the non-zeros only,
    and the backward is itself made of differentiable operations, so the power-series
    log-det can differentiate through it again.
    """

    @staticmethod
    def forward(ctx, values: Tensor, flat: Tensor, row: Tensor, col: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(values, flat, row, col)
        matrix = torch.sparse_coo_tensor(torch.stack([row, col]), values, (num_rows, flat.shape[0]))
        return torch.sparse.mm(matrix, flat)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, flat, row, col = ctx.saved_tensors
        grad_values = grad_flat = None
        if ctx.needs_input_grad[0]:
            grad_values = (grad.index_select(0, row) * flat.index_select(0, col)).sum(-1)
        if ctx.needs_input_grad[1]:
            grad_flat = _SparseMatmul.apply(values, grad, col, row, flat.shape[0])
        return grad_values, grad_flat, None, None, None


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
