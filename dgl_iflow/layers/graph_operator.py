"""Graph operators as torch tensors, built once from a graph's edge list.

DGL's ``update_all`` costs 5-20x more than a dense torch matmul for the small graphs and
many samples of this library (measured in ``benchmarks/layers.py``), ``torch.func`` cannot
differentiate through DGL's operators, and DGL's PyPI build has no CUDA. So layers read
the graph structure once and apply it as a dense ``(R, V)`` matrix (small graphs) or a sparse
operator in CSR form (large graphs) whose pattern is sorted once; both follow ``.to(device)``
and autograd.

The switch from dense to sparse is where ``benchmarks/layers.py`` measured sparse to become
faster on features ``(V, 200, 2)``, forward + backward (``docs/layers.md``): at about 130
nodes for an operator with fixed values (ChebConv's Laplacian), and at 60-90 nodes for one with
learnable values (L3Conv's filters), whose dense gradient is a ``(R, V)`` matrix product.
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..graphs import GraphLike, as_graph

#: Graphs with at most this many nodes get dense operators with fixed values; larger ones
#: get sparse ones (:class:`SparseOperator`).
DENSE_MAX_NODES = 128
#: The same threshold for operators whose values require grad.
DENSE_MAX_NODES_LEARNABLE = 80


#: Below this many columns torch's sampled product (``sparse.sampled_addmm``, CPU) is 2-3x slower
#: than gathering both factors at every non-zero; from 8 columns on it is 2-20x faster
#: (``docs/performance.md``, "Scale").
SAMPLED_KERNEL_MIN_WIDTH = 8


def use_sparse(num_nodes: int, learnable: bool = False) -> bool:
    """Whether a graph of ``num_nodes`` nodes gets a sparse operator; ``learnable``: its values
    require grad."""
    return num_nodes > (DENSE_MAX_NODES_LEARNABLE if learnable else DENSE_MAX_NODES)


def operator_matrix(row: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor | SparseOperator:
    """Matrix with ``values`` summed at ``(row, col)``, dense or sparse by the node count
    (and whether ``values`` requires grad, see :func:`use_sparse`).

    Differentiable with respect to ``values``. The sparse form sorts the pairs: build it once
    per graph (or, for values that change, keep a :class:`SparsePattern` and call
    :meth:`SparsePattern.with_values`).
    """
    if use_sparse(shape[1], learnable=values.requires_grad):
        pattern, slots = SparsePattern.from_pairs(row, col, shape)
        summed = values.new_zeros(pattern.nnz).index_add(0, slots, values)
        return pattern.with_values(summed)
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return dense.index_put((row, col), values, accumulate=True)


def node_matmul(matrix: Tensor | SparseOperator, feat: Tensor) -> Tensor:
    """Apply a ``(R, V)`` operator along the node axis of ``feat`` of shape ``(V, *, C)``.

    Returns a tensor of shape ``(R, *, C)``.
    """
    flat = feat.reshape(feat.shape[0], -1)
    if matrix.is_sparse:
        out = _SparseMatmul.apply(matrix.values, flat, matrix.pattern)
    else:
        out = matrix @ flat
    return out.reshape(matrix.shape[0], *feat.shape[1:])


def _compressed(sorted_index: Tensor, size: int) -> Tensor:
    """CSR row pointers ``(size + 1,)`` of a sorted row index."""
    counts = torch.bincount(sorted_index, minlength=size)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        # torch 2.2 flags every CSR tensor as beta; the two products used here are tested.
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        # The patterns are built sorted and unique here; checking them again at every product costs.
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class SparsePattern:
    """Where the non-zeros of an ``(R, C)`` operator lie: unique ``(row, col)`` pairs sorted by
    row, in CSR form, and the permutation to its transpose's, so that no product sorts anything.

    Build it once per graph structure (:meth:`from_pairs`, or the constructor for pairs that
    are already unique and sorted by ``(row, col)``); the values may change at every call
    (:meth:`with_values`).
    """

    def __init__(self, row: Tensor, col: Tensor, shape: tuple[int, int]) -> None:
        self.row, self.col, self.shape = row, col, (int(shape[0]), int(shape[1]))
        self.crow = _compressed(row, self.shape[0])
        self._transpose: tuple[SparsePattern, Tensor] | None = None

    @classmethod
    def from_pairs(cls, row: Tensor, col: Tensor, shape: tuple[int, int]) -> tuple[SparsePattern, Tensor]:
        """The pattern of the pairs ``(row[e], col[e])``, duplicates merged, and the slot ``(E,)``
        of every pair in it (sum values into the slots with ``index_add``)."""
        keys, slots = torch.unique(row.long() * shape[1] + col.long(), sorted=True, return_inverse=True)
        return cls(keys // shape[1], keys % shape[1], shape), slots

    @property
    def nnz(self) -> int:
        return len(self.col)

    def transpose(self) -> tuple[SparsePattern, Tensor]:
        """The transpose's pattern and the order ``(nnz,)`` that takes values to it: ``values[order]``."""
        if self._transpose is None:
            order = torch.argsort(self.col * self.shape[0] + self.row)
            transposed = SparsePattern(self.col[order], self.row[order], (self.shape[1], self.shape[0]))
            transposed._transpose = (self, torch.argsort(order))
            self._transpose = (transposed, order)
        return self._transpose

    def with_values(self, values: Tensor) -> SparseOperator:
        """The operator with ``values`` ``(nnz,)`` in this pattern's order."""
        if values.shape != (self.nnz,):
            raise ValueError(f"the pattern has {self.nnz} non-zeros, got values of shape {tuple(values.shape)}")
        return SparseOperator(self, values)

    def matmul(self, values: Tensor, flat: Tensor) -> Tensor:
        """``S @ flat`` for ``S`` with ``values``; ``flat`` of shape ``(C, W)``. Not differentiable."""
        return torch.sparse.mm(_csr(self.crow, self.col, values, self.shape), flat)

    def sampled_products(self, left: Tensor, right: Tensor) -> Tensor:
        r""":math:`\langle \mathrm{left}_r, \mathrm{right}_c \rangle` at every non-zero ``(r, c)``,
        ``(nnz,)``, from ``left`` ``(R, W)`` and ``right`` ``(C, W)``. Not differentiable."""
        if left.shape[1] < SAMPLED_KERNEL_MIN_WIDTH:
            return (left.index_select(0, self.row) * right.index_select(0, self.col)).sum(-1)
        mask = _csr(self.crow, self.col, left.new_zeros(self.nnz), self.shape)
        return torch.sparse.sampled_addmm(mask, left, right.T, beta=0.0).values()


class SparseOperator:
    """A sparse ``(R, C)`` operator: a :class:`SparsePattern` and its values, which may require grad."""

    is_sparse = True

    def __init__(self, pattern: SparsePattern, values: Tensor) -> None:
        self.pattern, self.values = pattern, values

    @property
    def shape(self) -> tuple[int, int]:
        return self.pattern.shape

    def to_dense(self) -> Tensor:
        """The dense ``(R, C)`` matrix, differentiable in the values."""
        dense = self.values.new_zeros(self.shape)
        return dense.index_put((self.pattern.row, self.pattern.col), self.values)


class _SparseMatmul(torch.autograd.Function):
    r"""``S @ flat`` for ``S`` given by a :class:`SparsePattern` and ``values``, differentiable in
    both, twice.

    ``torch.sparse.mm`` computes the gradient with respect to the sparse values through a
    dense ``(R, V)`` matrix: quadratic time and memory in the node count. Here that gradient is
    :math:`\partial L / \partial S_{rc} = \langle G_r, X_c \rangle` on the non-zeros only (a
    sampled product, :class:`_SampledProducts`), the gradient of ``flat`` is the product with
    the transpose, whose pattern is built once, and both are themselves differentiable, so the
    power-series log-det can differentiate through them again.
    """

    @staticmethod
    def forward(ctx, values: Tensor, flat: Tensor, pattern: SparsePattern) -> Tensor:
        ctx.save_for_backward(values, flat)
        ctx.pattern = pattern
        return pattern.matmul(values, flat)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, flat = ctx.saved_tensors
        pattern = ctx.pattern
        grad_values = grad_flat = None
        if ctx.needs_input_grad[0]:
            grad_values = _SampledProducts.apply(grad, flat, pattern)
        if ctx.needs_input_grad[1]:
            grad_flat = _transposed_matmul(pattern, values, grad)
        return grad_values, grad_flat, None


class _SampledProducts(torch.autograd.Function):
    r""":math:`\langle L_r, R_c \rangle` at the non-zeros of a pattern, differentiable (through
    :class:`_SparseMatmul`) in both factors."""

    @staticmethod
    def forward(ctx, left: Tensor, right: Tensor, pattern: SparsePattern) -> Tensor:
        ctx.save_for_backward(left, right)
        ctx.pattern = pattern
        return pattern.sampled_products(left.contiguous(), right.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        left, right = ctx.saved_tensors
        pattern = ctx.pattern
        grad_left = grad_right = None
        if ctx.needs_input_grad[0]:
            grad_left = _SparseMatmul.apply(grad, right, pattern)
        if ctx.needs_input_grad[1]:
            grad_right = _transposed_matmul(pattern, grad, left)
        return grad_left, grad_right, None


def _transposed_matmul(pattern: SparsePattern, values: Tensor, flat: Tensor) -> Tensor:
    """``S^T @ flat`` for ``S`` given by ``pattern`` and ``values``, differentiable."""
    transposed, order = pattern.transpose()
    return _SparseMatmul.apply(values[order], flat, transposed)


def dense_matrix(matrix: Tensor | SparseOperator) -> Tensor:
    """The dense form of a dense or sparse operator."""
    return matrix.to_dense() if matrix.is_sparse else matrix


def check_features(graph: GraphLike, feat: Tensor, in_feats: int, layer: str) -> None:
    """Raise ``ValueError`` unless ``feat`` has shape ``(V, *, in_feats)`` for ``graph``."""
    graph = as_graph(graph)
    if feat.dim() < 2 or feat.shape[0] != graph.num_nodes() or feat.shape[-1] != in_feats:
        raise ValueError(
            f"{layer} expects features of shape (V, *, {in_feats}) with V = {graph.num_nodes()} "
            f"nodes of the graph, got {tuple(feat.shape)}"
        )


class GraphMemo:
    """One value remembered per graph, held weakly, and a key such as device and dtype.

    The graph is the :class:`~dgl_iflow.graphs.Graph` that :func:`~dgl_iflow.graphs.as_graph`
    gives for the user's graph object: the same one while that object lives unedited, a new
    one once it is edited or garbage-collected, which then misses the memo. The memo is dropped
    on pickling and copying.
    """

    def __init__(self) -> None:
        self.clear()

    def get(self, graph: GraphLike, key: tuple, build: Callable[[], Any]) -> Any:
        """The value remembered for ``graph`` and ``key``, built and remembered if missing."""
        graph = as_graph(graph)
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
