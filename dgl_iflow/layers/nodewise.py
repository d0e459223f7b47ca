"""Node-wise linear layer in the form of a graph convolution."""
from __future__ import annotations

import torch
from torch import Tensor

from ..graphs import GraphLike, as_graph
from .basis_conv import BasisConv, ConvOptions


class NodewiseConv(BasisConv):
    r"""Node-wise linear layer, a :class:`BasisConv` with the single operator :math:`A_1 = I`.

    .. math::
        Y = X W + b,

    the same map on every node, which ignores the edges. In the common form, a network built
    on it (an MLP on each node, or on one node holding a whole graph's features) gets its
    exact Jacobian and divergence with no special case.

    Parameters
    ----------
    in_feats : int
        Input feature size :math:`C_{in}`.
    out_feats : int
        Output feature size :math:`C_{out}`.
    bias : bool
        Learn an additive bias.

    Examples
    --------
    >>> import torch
    >>> from dgl_iflow.graphs import Graph
    >>> from dgl_iflow.layers import NodewiseConv
    >>> g = Graph([0, 1], [1, 2])  # or a DGLGraph, a PyG Data, (edge_index, V)
    >>> conv = NodewiseConv(2, 4)
    >>> conv(g, torch.randn(3, 10, 2)).shape
    torch.Size([3, 10, 4])
    """

    @classmethod
    def build(cls, in_feats: int, out_feats: int, graph: GraphLike | None, options: ConvOptions) -> NodewiseConv:
        return cls(in_feats, out_feats)

    def __init__(self, in_feats: int, out_feats: int, bias: bool = True) -> None:
        super().__init__(in_feats, out_feats, num_bases=1, bias=bias)
        self.reset_parameters()

    def apply_bases(self, graph: GraphLike, feat: Tensor, edge_weight: Tensor | None) -> Tensor:
        return feat.unsqueeze(0)

    def basis_matrices(self, graph: GraphLike, edge_weight: Tensor | None = None) -> Tensor:
        identity = torch.eye(as_graph(graph).num_nodes(), dtype=self.weight.dtype, device=self.weight.device)
        return identity.unsqueeze(0)

    def operator_diagonals(self, graph: GraphLike, edge_weight: Tensor | None = None) -> Tensor:
        return torch.ones(1, as_graph(graph).num_nodes(), dtype=self.weight.dtype, device=self.weight.device)
