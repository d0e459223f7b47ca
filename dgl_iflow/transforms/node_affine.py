"""Invertible per-node affine map with an exact log-determinant."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import GraphLike, as_graph
from .base import GraphTransform


class NodeAffine(GraphTransform):
    r"""Per-node, per-channel scale and shift (an ActNorm for graph signals).

    .. math::
        Y_{v} = X_{v} \odot e^{s_v} + t_v, \qquad
        \log|\det J| = \sum_{v=1}^{V} \sum_{i=1}^{D} s_{v,i},

    with :math:`s, t \in \mathbb{R}^{V \times D}` learned. Residual blocks move points only
    as far as their transport cost allows; this layer gives every node its own location and
    scale for free, so a latent with means shared by all nodes fits nodes whose features sit
    at different levels. It starts as the identity. The inverse is exact.

    Parameters
    ----------
    num_nodes : int
        :math:`V`: one scale and shift per node, so the layer is tied to the node count.
    feats : int
        :math:`D`.

    Examples
    --------
    >>> import torch
    >>> from dgl_iflow.graphs import Graph
    >>> from dgl_iflow.transforms import NodeAffine
    >>> g = Graph([0, 1, 1, 2], [1, 0, 2, 1])  # or a DGLGraph, a PyG Data, (edge_index, V)
    >>> layer = NodeAffine(3, 2)
    >>> y, logdet = layer(g, torch.randn(3, 5, 2))
    >>> logdet.shape
    torch.Size([5])
    """

    #: Its moves are free: the flow's transport cost is meant to keep residual blocks
    #: invertible, and this layer is invertible for every value of its parameters.
    counts_transport = False

    def __init__(self, num_nodes: int, feats: int) -> None:
        super().__init__()
        if num_nodes < 1 or feats < 1:
            raise ValueError(f"num_nodes and feats must be positive, got {num_nodes} and {feats}")
        self.log_scale = nn.Parameter(torch.empty(num_nodes, feats))
        self.shift = nn.Parameter(torch.empty(num_nodes, feats))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity map."""
        nn.init.zeros_(self.log_scale)
        nn.init.zeros_(self.shift)

    def _check_input(self, graph: GraphLike, x: Tensor, name: str) -> None:
        graph = as_graph(graph)
        num_nodes, feats = self.log_scale.shape
        if graph.num_nodes() != num_nodes or x.dim() < 2 or x.shape[0] != num_nodes or x.shape[-1] != feats:
            raise ValueError(
                f"NodeAffine was built for {num_nodes} nodes of {feats} features: {name} must have shape "
                f"(V, *, D) = ({num_nodes}, *, {feats}) on a graph of {num_nodes} nodes, got "
                f"{tuple(x.shape)} on a graph of {graph.num_nodes()} nodes"
            )

    def _broadcast(self, param: Tensor, x: Tensor) -> Tensor:
        return param.reshape(param.shape[0], *([1] * (x.dim() - 2)), param.shape[1])

    def _logdet(self, x: Tensor, sign: float, wanted: bool) -> Tensor | None:
        return sign * self.log_scale.sum().expand(x.shape[1:-1]) if wanted else None

    def forward(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """``y`` of the shape ``(V, *, D)`` of ``x``, and the log-det ``(*,)`` (``None`` unless ``logdet``)."""
        self._check_input(graph, x, "x")
        y = x * self._broadcast(self.log_scale, x).exp() + self._broadcast(self.shift, x)
        return y, self._logdet(x, 1.0, logdet)

    @torch.no_grad()
    def inverse(
        self, graph: GraphLike, y: Tensor, logdet: bool = False, *,
        tol: float = 1e-6, max_iter: int = 200, on_failure: str = "raise",
    ) -> tuple[Tensor, Tensor | None]:
        """Exact inverse (``tol``, ``max_iter``, ``on_failure`` unused) and its log-det."""
        self._check_input(graph, y, "y")
        x = (y - self._broadcast(self.shift, y)) * (-self._broadcast(self.log_scale, y)).exp()
        return x, self._logdet(y, -1.0, logdet)

    def extra_repr(self) -> str:
        num_nodes, feats = self.log_scale.shape
        return f"num_nodes={num_nodes}, feats={feats}"
