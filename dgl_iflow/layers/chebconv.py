"""Spectral Chebyshev graph convolution."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from ..graphs import Graph, GraphLike, as_graph
from .basis_conv import BasisConv, ConvOptions, component_index
from .graph_operator import GraphMemo, node_matmul, operator_matrix


#: A computed lambda_max below this means the Laplacian is zero; 2 is used instead.
_ZERO_LAPLACIAN = 1e-6


def _normalized_adjacency_values(graph: GraphLike, edge_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Edges ``(dst, src)`` and values of :math:`D^{-1/2} A D^{-1/2}`, in-degrees weighted."""
    graph = as_graph(graph)
    src, dst = graph.edges()
    src, dst = src.to(edge_weight.device), dst.to(edge_weight.device)
    degree = torch.zeros(graph.num_nodes(), dtype=edge_weight.dtype, device=edge_weight.device)
    degree = degree.index_add(0, dst, edge_weight)
    # An isolated node keeps a zero row: its Laplacian row is the identity.
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-30).rsqrt(), torch.zeros_like(degree))
    return dst, src, inv_sqrt[dst] * edge_weight * inv_sqrt[src]


def laplacian_lambda_max(graph: GraphLike, edge_weight: Tensor | None = None) -> list[float]:
    r"""Largest real part of the eigenvalues of :math:`L = I - D^{-1/2} A D^{-1/2}`, per graph.

    For a batched graph (``dgl.batch``, a PyG ``Batch``) one value per graph of the batch, as
    ``dgl.laplacian_lambda_max`` returns them: each graph's Laplacian is its own block. Dense
    eigen-decomposition for small graphs, ARPACK for large ones. ``edge_weight`` ``(E,)``
    defaults to the graph's own; without either every edge weighs 1.

    Returns
    -------
    list of float
        ``graph.batch_size`` values; 0 for a graph without nodes.
    """
    graph = as_graph(graph)
    edge_weight = graph.edge_weight if edge_weight is None else edge_weight
    weight = torch.ones(graph.num_edges(), dtype=torch.float64) if edge_weight is None \
        else edge_weight.detach().to("cpu", torch.float64)
    dst, src, values = _normalized_adjacency_values(graph, weight)
    # Edges never cross graphs of a batch, so an edge belongs to the graph of its destination.
    edge_component = component_index(graph, dst.device)[0][dst].cpu().numpy()
    values, dst, src = values.numpy(), dst.cpu().numpy(), src.cpu().numpy()
    result = []
    for component, (num_nodes, offset) in enumerate(zip(graph.batch_num_nodes().tolist(), graph.node_offsets().tolist())):
        if num_nodes == 0:
            result.append(0.0)
            continue
        mask = edge_component == component
        norm_adj = scipy.sparse.coo_matrix(
            (values[mask], (dst[mask] - offset, src[mask] - offset)), shape=(num_nodes, num_nodes),
        ).tocsr()
        laplacian = scipy.sparse.identity(num_nodes, format="csr") - norm_adj
        if num_nodes <= 512:
            eigenvalues = np.linalg.eigvals(laplacian.toarray())
        else:
            eigenvalues = scipy.sparse.linalg.eigs(laplacian, k=1, which="LR", return_eigenvectors=False)
        result.append(float(np.max(eigenvalues.real)))
    return result


def _checked_lambda_max(lambda_max: float | Sequence[float]) -> float | tuple[float, ...]:
    """One positive float, or a tuple of them (one per graph of a batch)."""
    checked = float(lambda_max) if np.ndim(lambda_max) == 0 else tuple(float(v) for v in lambda_max)
    if min(np.atleast_1d(checked), default=0.0) <= 0:
        raise ValueError(f"lambda_max must be positive, got {lambda_max}")
    return checked


def _lambda_values(graph: Graph, edge_weight: Tensor | None, lambda_max: float | tuple[float, ...] | None) -> list[float]:
    """One lambda_max per graph of the batch: the given ones, else computed."""
    if lambda_max is None:
        return laplacian_lambda_max(graph, edge_weight)
    if isinstance(lambda_max, float):
        return [lambda_max] * graph.batch_size
    if len(lambda_max) != graph.batch_size:
        raise ValueError(f"lambda_max gives {len(lambda_max)} values, but the graph is a batch of "
                         f"{graph.batch_size} graph(s); give one value per graph, or a single float")
    return list(lambda_max)


class ChebConv(BasisConv):
    r"""Chebyshev spectral graph convolution (Defferrard et al., 2016).

    .. math::
        Y = \sum_{k=0}^{K-1} T_k(\tilde{L}) X W_k + b, \qquad
        \tilde{L} = \frac{2}{\lambda_{max}} \left(I - D^{-1/2} A D^{-1/2}\right) - I,

    with :math:`T_0 = I`, :math:`T_1 = \tilde L`, :math:`T_k = 2 \tilde L T_{k-1} - T_{k-2}`,
    :math:`A_{vu}` the weight of edge ``u -> v`` and :math:`D` the weighted in-degrees.
    The layer is spectral: it commutes with every automorphism of the graph.

    Parameters
    ----------
    in_feats : int
        Input feature size :math:`C_{in}`.
    out_feats : int
        Output feature size :math:`C_{out}`.
    k : int
        Number of Chebyshev terms :math:`K` (filter order :math:`K - 1`).
    lambda_max : float or sequence of float, optional
        Largest eigenvalue of the normalized Laplacian: one value for every graph, or one per
        graph of a batched graph (``dgl.batch``, a PyG ``Batch``), as ``dgl.laplacian_lambda_max`` lists them.
        Computed from the graph (and the edge weights, taken as constants) when absent, per
        graph of a batch, so that each graph's output does not depend on what it was batched
        with. A computed value of zero (a graph whose nodes have only self-loops,
        :math:`L = 0`) is replaced by 2.
    activation : callable, optional
        Applied to the output. Default: none.
    bias : bool
        Learn an additive bias.
    graph_mean : bool
        Add the graph-wide mean as one more operator (see :class:`BasisConv`); it commutes
        with every node permutation, so the layer stays spectral.

    Examples
    --------
    >>> import torch
    >>> from dgl_iflow.graphs import Graph
    >>> from dgl_iflow.layers import ChebConv
    >>> g = Graph([0, 1, 1, 2], [1, 0, 2, 1])  # or a DGLGraph, a PyG Data, (edge_index, V)
    >>> conv = ChebConv(2, 4, k=3)
    >>> conv(g, torch.randn(3, 10, 2)).shape
    torch.Size([3, 10, 4])

    The scaled Laplacian is cached per graph object, device, dtype and ``lambda_max`` (rebuilt
    when the graph is edited), unless the weights may change between calls: weights passed as
    ``edge_weight``, or graph weights that require grad, rebuild it on every call,
    differentiably; pass ``lambda_max`` then to skip the eigenvalue computation.

    The constructor and the call take what DGL's ``ChebConv`` takes,
    ``ChebConv(in_feats, out_feats, k)`` and ``forward(graph, feat, lambda_max=None)``, plus
    ``edge_weight``. The differences: ``feat`` may carry sample dimensions ``(V, *, C_in)``,
    and the activation is none unless given (DGL's is ReLU). PyTorch Geometric's ``ChebConv``
    computes the same operator (its ``normalization="sym"``, ``K = k``) but is called
    ``conv(x, edge_index, edge_weight)`` and assumes ``lambda_max = 2`` unless told; here the
    graph comes first in any form (a ``Data``, ``(edge_index, num_nodes)``), its
    ``edge_weight`` is used unless one is passed, and ``lambda_max`` is computed when absent.
    """

    @classmethod
    def build(cls, in_feats: int, out_feats: int, graph: GraphLike | None, options: ConvOptions) -> ChebConv:
        return cls(in_feats, out_feats, k=options.cheb_k, lambda_max=options.lambda_max,
                   graph_mean=options.graph_mean)

    def __init__(
        self,
        in_feats: int,
        out_feats: int,
        k: int,
        lambda_max: float | Sequence[float] | None = None,
        activation=None,
        bias: bool = True,
        graph_mean: bool = False,
    ) -> None:
        super().__init__(in_feats, out_feats, num_bases=k, bias=bias, graph_mean=graph_mean)
        self._lambda_max = None if lambda_max is None else _checked_lambda_max(lambda_max)
        self.activation = activation
        self._laplacian_memo = GraphMemo()
        self.reset_parameters()

    def scaled_laplacian(self, graph: GraphLike, like: Tensor, edge_weight: Tensor | None = None,
                         lambda_max: float | Sequence[float] | None = None) -> Tensor:
        r""":math:`\tilde L` as a ``(V, V)`` dense or sparse matrix on ``like``'s device and dtype.

        ``edge_weight`` defaults to the graph's own; ``lambda_max`` to the constructor's.
        """
        graph = as_graph(graph)
        lambda_max = self._lambda_max if lambda_max is None else _checked_lambda_max(lambda_max)
        edge_weight = graph.edge_weight if edge_weight is None else edge_weight
        # Weights that learn give a new operator at every step; fixed ones one per graph.
        cached = edge_weight is None or (edge_weight is graph.edge_weight and not edge_weight.requires_grad)
        if edge_weight is not None and edge_weight.shape != (graph.num_edges(),):
            raise ValueError(
                f"edge_weight must have shape ({graph.num_edges()},) for a graph of "
                f"{graph.num_edges()} edges, got {tuple(edge_weight.shape)}"
            )

        def build() -> Tensor:
            weight = torch.ones(graph.num_edges(), dtype=like.dtype, device=like.device) \
                if edge_weight is None else edge_weight.to(like.dtype)
            lambdas = torch.tensor(_lambda_values(graph, edge_weight, lambda_max), dtype=like.dtype, device=like.device)
            # L = 0 (every node has only self-loops): any scale gives L~ = -I.
            lambdas = torch.where(lambdas > _ZERO_LAPLACIAN, lambdas, torch.full_like(lambdas, 2.0))
            dst, src, values = _normalized_adjacency_values(graph, weight)
            nodes = torch.arange(graph.num_nodes(), device=like.device)
            # Each graph of a batch is its own block of L~, scaled by its own lambda_max.
            scale = (2.0 / lambdas)[component_index(graph, like.device)[0]]
            row = torch.cat([dst, nodes])
            col = torch.cat([src, nodes])
            entries = torch.cat([-scale[dst] * values, scale - 1.0])
            return operator_matrix(row, col, entries, (graph.num_nodes(), graph.num_nodes()))

        if not cached:
            return build()
        return self._laplacian_memo.get(graph, (like.device, like.dtype, lambda_max), build)

    def apply_bases(self, graph: GraphLike, feat: Tensor, edge_weight: Tensor | None,
                    lambda_max: float | Sequence[float] | None = None) -> Tensor:
        graph = as_graph(graph)
        if self._num_bases == 1:
            return feat.unsqueeze(0)
        laplacian = self.scaled_laplacian(graph, feat, edge_weight, lambda_max)
        terms = [feat, node_matmul(laplacian, feat)]
        for _ in range(2, self._num_bases):
            terms.append(2.0 * node_matmul(laplacian, terms[-1]) - terms[-2])
        return torch.stack(terms)

    def basis_matrices(self, graph: GraphLike, edge_weight: Tensor | None = None) -> Tensor:
        graph = as_graph(graph)
        identity = torch.eye(graph.num_nodes(), dtype=self.weight.dtype, device=self.weight.device)
        return self.apply_bases(graph, identity, edge_weight)

    def forward(self, graph: GraphLike, feat: Tensor, lambda_max: float | Sequence[float] | None = None,
                edge_weight: Tensor | None = None) -> Tensor:
        """Convolve node features ``(V, *, C_in)`` to ``(V, *, C_out)``; ``lambda_max`` for this
        call (one value, or one per graph of a batch) overrides the constructor's, and
        ``edge_weight`` ``(E,)`` the graph's own (see :meth:`BasisConv.forward`)."""
        if isinstance(lambda_max, Tensor) and lambda_max.dim() == 1 and lambda_max.is_floating_point():
            raise TypeError("ChebConv.forward takes lambda_max third, as DGL's does; pass edge weights as "
                            "edge_weight=..., or keep them on the graph")
        out = self.add_bias(self.linear_part(graph, feat, edge_weight, lambda_max=lambda_max))
        return out if self.activation is None else self.activation(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self._num_bases}, lambda_max={self._lambda_max}"
