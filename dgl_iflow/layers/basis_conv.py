"""Shared form of the graph convolutions: node bases followed by channel mixing."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from .._backend import dgl
from .graph_operator import check_features


class BasisConv(nn.Module, ABC):
    r"""Base of graph convolutions of the form

    .. math::
        Y = \sum_{k=1}^{K} (A_k X) W_k + b,

    with node operators :math:`A_k \in \mathbb{R}^{V \times V}` (fixed by the graph for
    :class:`ChebConv`, learnable local filters for :class:`L3Conv`) and channel mixing
    :math:`W_k \in \mathbb{R}^{C_{in} \times C_{out}}`. The common form lets the invertible
    blocks assemble exact Jacobians from :meth:`basis_matrices` and :attr:`weight`.

    Subclasses implement :meth:`apply_bases` and :meth:`basis_matrices`.
    """

    def __init__(self, in_feats: int, out_feats: int, num_bases: int, bias: bool = True) -> None:
        super().__init__()
        if in_feats < 1 or out_feats < 1 or num_bases < 1:
            raise ValueError(
                f"in_feats, out_feats and the number of bases must be positive, got "
                f"{in_feats}, {out_feats}, {num_bases}"
            )
        self._in_feats = in_feats
        self._out_feats = out_feats
        self._num_bases = num_bases
        self.weight = nn.Parameter(torch.empty(num_bases, in_feats, out_feats))
        self.bias = nn.Parameter(torch.empty(out_feats)) if bias else None

    @property
    def in_feats(self) -> int:
        return self._in_feats

    @property
    def out_feats(self) -> int:
        return self._out_feats

    @property
    def num_bases(self) -> int:
        return self._num_bases

    def reset_parameters(self) -> None:
        """Glorot-uniform channel mixing over all bases, zero bias."""
        bound = math.sqrt(6.0 / (self._num_bases * self._in_feats + self._out_feats))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @abstractmethod
    def apply_bases(self, graph: dgl.DGLGraph, feat: Tensor, edge_weight: Tensor | None) -> Tensor:
        """``(K, V, *, C_in)`` stack of :math:`A_k X`."""

    @abstractmethod
    def basis_matrices(self, graph: dgl.DGLGraph, edge_weight: Tensor | None = None) -> Tensor:
        """Dense ``(K, V, V)`` stack of the node operators :math:`A_k`."""

    def forward(self, graph: dgl.DGLGraph, feat: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        """Convolve node features.

        Parameters
        ----------
        graph : DGLGraph
            Graph with :math:`V` nodes; an edge ``u -> v`` lets node ``v`` read node ``u``.
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
        return self.add_bias(self.linear_part(graph, feat, edge_weight))

    def add_bias(self, out: Tensor) -> Tensor:
        """``out + b`` for ``out`` of shape ``(V, *, C_out)``; a per-node bias ``(V, C_out)``
        broadcasts over the sample dimensions."""
        if self.bias is None:
            return out
        if self.bias.dim() == 1:
            return out + self.bias
        return out + self.bias.reshape(self.bias.shape[0], *([1] * (out.dim() - 2)), self.bias.shape[1])

    def linear_part(self, graph: dgl.DGLGraph, feat: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        r"""The bias-free part :math:`\sum_k (A_k X) W_k`, a linear map of ``feat``.

        :class:`GraphResidual` uses it to estimate the operator norm of the layer.
        """
        check_features(graph, feat, self._in_feats, type(self).__name__)
        bases = self.apply_bases(graph, feat, edge_weight)
        return torch.einsum("kn...i,kio->n...o", bases, self.weight)

    def extra_repr(self) -> str:
        return (
            f"in_feats={self._in_feats}, out_feats={self._out_feats}, "
            f"num_bases={self._num_bases}, bias={self.bias is not None}"
        )
