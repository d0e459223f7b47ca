"""Shared form of the graph convolutions: node bases followed by channel mixing."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..graphs import GraphLike, as_graph
from .graph_operator import check_features


@dataclass(frozen=True)
class ConvOptions:
    """The options of every convolution :func:`~dgl_iflow.layers.make_conv` builds; each takes the ones it has.

    ``cheb_k`` and ``lambda_max`` belong to :class:`~dgl_iflow.layers.ChebConv`, ``orders`` and
    ``node_bias`` to :class:`~dgl_iflow.layers.L3Conv`, ``graph_mean`` to both.
    """

    cheb_k: int = 3
    lambda_max: float | None = None
    orders: Sequence[int] = (0, 1, 2)
    node_bias: bool = False
    graph_mean: bool = False


class BasisConv(nn.Module, ABC):
    r"""Base of graph convolutions of the form

    .. math::
        Y = \sum_{k=1}^{K} (A_k X) W_k + b,

    with node operators :math:`A_k \in \mathbb{R}^{V \times V}` (fixed by the graph for
    :class:`ChebConv`, learnable local filters for :class:`L3Conv`) and channel mixing
    :math:`W_k \in \mathbb{R}^{C_{in} \times C_{out}}`. The common form lets the invertible
    blocks assemble exact Jacobians from :meth:`operator_matrices` and :attr:`weight`.

    With ``graph_mean=True`` one more operator joins the subclass's bases: the mean over the
    nodes of each graph, :math:`A_{K+1} = \frac{1}{V} \mathbf{1}\mathbf{1}^\top` (block-wise
    for a batch of graphs: ``dgl.batch``, a PyG ``Batch``, :func:`dgl_iflow.graphs.batch`). It is a graph-wide channel: every node reads a summary
    of all the others in one layer, which local bases need as many layers as the diameter for
    (traffic sensors all follow the time of day). It commutes with every node permutation,
    so it keeps a spectral layer spectral.

    Subclasses implement :meth:`apply_bases` and :meth:`basis_matrices` for their own bases,
    and :meth:`build` to be built by name (:data:`~dgl_iflow.layers.CONVS`).
    """

    #: Whether :meth:`build` needs the graph (per-node parameters), so callers keep it for the layer.
    needs_graph: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def build(cls, in_feats: int, out_feats: int, graph: GraphLike | None, options: ConvOptions) -> BasisConv:
        """A fresh convolution ``in_feats -> out_feats`` with the ``options`` it has, for
        :func:`~dgl_iflow.layers.make_conv`; ``graph`` is ``None`` where the caller has none."""

    def __init__(self, in_feats: int, out_feats: int, num_bases: int, bias: bool = True,
                 graph_mean: bool = False) -> None:
        super().__init__()
        if in_feats < 1 or out_feats < 1 or num_bases < 1:
            raise ValueError(
                f"in_feats, out_feats and the number of bases must be positive, got "
                f"{in_feats}, {out_feats}, {num_bases}"
            )
        self._in_feats = in_feats
        self._out_feats = out_feats
        self._num_bases = num_bases
        self._graph_mean = graph_mean
        self.weight = nn.Parameter(torch.empty(num_bases + int(graph_mean), in_feats, out_feats))
        self.bias = nn.Parameter(torch.empty(out_feats)) if bias else None

    @property
    def in_feats(self) -> int:
        return self._in_feats

    @property
    def out_feats(self) -> int:
        return self._out_feats

    @property
    def num_bases(self) -> int:
        """Number of node operators :math:`K`, the graph mean included."""
        return self.weight.shape[0]

    @property
    def graph_mean(self) -> bool:
        return self._graph_mean

    def reset_parameters(self) -> None:
        """Glorot-uniform channel mixing over all bases, zero bias."""
        bound = math.sqrt(6.0 / (self.num_bases * self._in_feats + self._out_feats))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @abstractmethod
    def apply_bases(self, graph: GraphLike, feat: Tensor, edge_weight: Tensor | None) -> Tensor:
        """``(K, V, *, C_in)`` stack of :math:`A_k X`."""

    @abstractmethod
    def basis_matrices(self, graph: GraphLike, edge_weight: Tensor | None = None) -> Tensor:
        """Dense ``(K, V, V)`` stack of the node operators :math:`A_k`."""

    def operators(self, graph: GraphLike, feat: Tensor, edge_weight: Tensor | None = None, **basis_options) -> Tensor:
        """``(K, V, *, C_in)`` stack of :math:`A_k X` over all operators, the graph mean included;
        ``basis_options`` go to the subclass's :meth:`apply_bases` (ChebConv's ``lambda_max``)."""
        graph = as_graph(graph)
        bases = self.apply_bases(graph, feat, edge_weight, **basis_options)
        if not self._graph_mean:
            return bases
        return torch.cat([bases, node_mean(graph, feat).unsqueeze(0)])

    def operator_matrices(self, graph: GraphLike, edge_weight: Tensor | None = None) -> Tensor:
        """Dense ``(K, V, V)`` stack of all node operators, the graph mean included."""
        graph = as_graph(graph)
        matrices = self.basis_matrices(graph, edge_weight)
        if not self._graph_mean:
            return matrices
        return torch.cat([matrices, node_mean_matrix(graph, matrices).unsqueeze(0)])

    def operator_diagonals(self, graph: GraphLike, edge_weight: Tensor | None = None) -> Tensor:
        r"""Diagonals :math:`(A_k)_{vv}` of all node operators, shape ``(K, V)``, differentiable.

        From the dense :meth:`operator_matrices`; a subclass with a cheaper way overrides it.
        """
        graph = as_graph(graph)
        return self.operator_matrices(graph, edge_weight).diagonal(dim1=1, dim2=2)

    def forward(self, graph: GraphLike, feat: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        """Convolve node features.

        Parameters
        ----------
        graph : GraphLike
            Graph with :math:`V` nodes, in any form of :mod:`dgl_iflow.graphs` (a ``DGLGraph``,
            a PyTorch Geometric ``Data``, ``(edge_index, num_nodes)``, a ``Graph``); an edge
            ``u -> v`` lets node ``v`` read node ``u``.
        feat : Tensor
            Node features of shape ``(V, *, C_in)``; ``*`` is any number of sample dimensions
            that share the graph.
        edge_weight : Tensor, optional
            Edge weights of shape ``(E,)``, where the layer supports them.

        Returns
        -------
        Tensor
            Shape ``(V, *, C_out)``.
        """
        graph = as_graph(graph)
        return self.add_bias(self.linear_part(graph, feat, edge_weight))

    def add_bias(self, out: Tensor) -> Tensor:
        """``out + b`` for ``out`` of shape ``(V, *, C_out)``; a per-node bias ``(V, C_out)``
        broadcasts over the sample dimensions."""
        if self.bias is None:
            return out
        if self.bias.dim() == 1:
            return out + self.bias
        return out + self.bias.reshape(self.bias.shape[0], *([1] * (out.dim() - 2)), self.bias.shape[1])

    def linear_part(self, graph: GraphLike, feat: Tensor, edge_weight: Tensor | None = None,
                    **basis_options) -> Tensor:
        r"""The bias-free part :math:`\sum_k (A_k X) W_k`, a linear map of ``feat``.

        :class:`GraphResidual` uses it to estimate the operator norm of the layer.
        """
        graph = as_graph(graph)
        check_features(graph, feat, self._in_feats, type(self).__name__)
        return torch.einsum("kn...i,kio->n...o", self.operators(graph, feat, edge_weight, **basis_options), self.weight)

    def extra_repr(self) -> str:
        return (
            f"in_feats={self._in_feats}, out_feats={self._out_feats}, "
            f"num_bases={self.num_bases}, bias={self.bias is not None}, graph_mean={self._graph_mean}"
        )


def component_index(graph: GraphLike, device: torch.device) -> tuple[Tensor, Tensor]:
    """Graph index of every node ``(V,)`` and node count of every graph ``(G,)`` of a batch."""
    graph = as_graph(graph)
    return graph.node_graph_index().to(device), graph.batch_num_nodes().to(device)


def node_mean(graph: GraphLike, feat: Tensor) -> Tensor:
    """Mean of ``feat`` ``(V, *, C)`` over the nodes of each graph, broadcast back to its nodes."""
    graph = as_graph(graph)
    if graph.batch_size == 1:
        return feat.mean(dim=0, keepdim=True).expand_as(feat)
    component, counts = component_index(graph, feat.device)
    sums = feat.new_zeros((len(counts), *feat.shape[1:])).index_add(0, component, feat)
    means = sums / counts.reshape(-1, *([1] * (feat.dim() - 1))).to(feat.dtype)
    return means[component]


def node_mean_matrix(graph: GraphLike, like: Tensor) -> Tensor:
    r"""Dense ``(V, V)`` operator of :func:`node_mean`: :math:`1/V_g` within each graph ``g``."""
    component, counts = component_index(graph, like.device)
    same = component[:, None] == component[None, :]
    return same.to(like.dtype) / counts[component][:, None].to(like.dtype)
