"""Time-dependent velocity fields on graph node features, with an exact divergence."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..graphs import GraphLike
from ..layers.factory import CONVS, make_conv
from ..layers.basis_conv import BasisConv
from .body import ConvMLP


class GraphVelocityField(ConvMLP):
    r"""Velocity :math:`f_\theta(X, t)` of node features: a graph convolution, then node-wise layers.

    .. math::
        z_0 = \mathrm{conv}(X) + t\, c_0, \qquad
        z_l = \sigma(z_{l-1}) W_l^\top + b_l + t\, c_l \quad (l = 1, \dots, L), \qquad
        f_\theta(X, t) = z_L,

    a :class:`~dgl_iflow.transforms.body.ConvMLP`: :math:`\mathrm{conv}(X) = \sum_k A_k X W_k
    + b_0` is a :class:`BasisConv` from :math:`D` to :math:`H_0` channels, and node-wise linear
    layers go through ``hidden_feats`` back to :math:`D`. Time enters every layer linearly, so
    an affine change of the time variable is absorbed exactly into the biases (:meth:`retime`).

    The exact divergence uses that everything after the convolution is node-wise: the diagonal
    block of the Jacobian at node :math:`v` is

    .. math::
        \frac{\partial f_v}{\partial x_v} = T_v = W_L \Sigma_{L-1} W_{L-1} \cdots \Sigma_0
        \sum_k (A_k)_{vv} W_k^\top, \qquad
        \operatorname{div} f = \sum_v \operatorname{tr} T_v,

    with :math:`\Sigma_l = \mathrm{diag}\,\sigma'(z_l)`. :meth:`forward_with_divergence`
    carries the :math:`D \times H_l` tangent forward with the features: :math:`D` times the
    cost of a forward pass and only the diagonals of the :math:`A_k`.

    Parameters
    ----------
    conv : BasisConv
        First layer, from :math:`D` to :math:`H_0` channels, with a bias and without an
        activation.
    hidden_feats : sequence of int
        Widths of the node-wise hidden layers after the convolution.
    activation : str
        ``"tanh"`` (cheapest exact divergence), ``"softplus"``, ``"lipswish"`` or ``"elu"``.
    output_scale : float
        Constant factor :math:`s` on the output, :math:`f = s\, z_L`. Blocks use
        :math:`s = 1 / h`, so the network learns the displacement of its block rather than a
        velocity: a short early block must move fast, and without the factor Adam needs many
        steps to grow the last layer that far.

    Notes
    -----
    The last layer and all time weights start at zero, so a new field is :math:`f = 0` and its
    block the identity map.
    """

    def __init__(
        self, conv: BasisConv, hidden_feats: Sequence[int] = (64,), activation: str = "tanh", output_scale: float = 1.0
    ) -> None:
        if conv.bias is None:
            raise ValueError("the convolution needs a bias: retime() absorbs time shifts into it")
        super().__init__(conv, hidden_feats, activation)
        self.output_scale = float(output_scale)
        self.time_weights = nn.ParameterList(nn.Parameter(torch.zeros(w)) for w in self.widths)
        nn.init.zeros_(self.linears[-1].weight)
        nn.init.zeros_(self.linears[-1].bias)

    def _biases(self) -> list[Tensor]:
        return [self.conv.bias, *(linear.bias for linear in self.linears)]

    def forward(self, graph: GraphLike, x: Tensor, t: float | Tensor) -> Tensor:
        """:math:`f_\\theta(x, t)` for ``x`` of shape ``(V, *, D)``; same shape out."""
        z = self.conv(graph, x) + t * self.time_weights[0]
        for activation, linear, time_weight in zip(self.activations, self.linears, self.time_weights[1:]):
            z = linear(activation(z)) + t * time_weight
        return self.output_scale * z

    def divergence_context(self, graph: GraphLike) -> Tensor:
        r"""Self-loop weight :math:`\sum_k (A_k)_{vv} W_k`, shape ``(V, D, H_0)``.

        Constant along one integration, so blocks compute it once per call.
        """
        return torch.einsum("kv,kdh->vdh", self.conv.operator_diagonals(graph), self.conv.weight)

    def forward_with_divergence(
        self, graph: GraphLike, x: Tensor, t: float | Tensor, context: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:math:`f_\\theta(x, t)` and its exact divergence.

        Parameters
        ----------
        x : Tensor
            Shape ``(V, B, D)``.
        context : Tensor
            :meth:`divergence_context` of the same graph.

        Returns
        -------
        tuple of Tensor
            ``f`` of shape ``(V, B, D)`` and the divergence of shape ``(B,)``.
        """
        z = self.conv(graph, x) + t * self.time_weights[0]
        # tangent[v, b, i, :] = d z_{v, b, :} / d x_{v, b, i}; rows last makes each layer one matmul.
        tangent = context.unsqueeze(1)
        for activation, linear, time_weight in zip(self.activations, self.linears, self.time_weights[1:]):
            value, slope = activation.value_and_derivative(z)
            tangent = (tangent * slope.unsqueeze(-2)) @ linear.weight.T
            z = linear(value) + t * time_weight
        divergence = tangent.diagonal(dim1=-2, dim2=-1).sum(dim=(0, -1))
        return self.output_scale * z, self.output_scale * divergence

    @torch.no_grad()
    def retime(self, alpha: float, beta: float, scale: float) -> None:
        r"""Replace :math:`f(x, t)` by :math:`\mathrm{scale} \cdot f(x, \alpha t + \beta)` exactly.

        With :math:`\alpha = \mathrm{scale} = h_{old} / h_{new}` this moves a block to a new
        interval without changing its flow map (RK4 with the same number of steps gives the
        same iterates), which is how blocks are re-spaced and warm-started. The factor goes to
        ``output_scale``, so a block's network keeps learning the displacement of its block.
        """
        for bias, time_weight in zip(self._biases(), self.time_weights):
            bias.add_(beta * time_weight)
            time_weight.mul_(alpha)
        self.output_scale *= scale

    def get_extra_state(self) -> dict[str, float]:
        return {"output_scale": self.output_scale}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.output_scale = state["output_scale"]


@dataclass
class FieldSpec:
    """Recipe for the velocity field of every block of a :class:`~dgl_iflow.JKOFlow`.

    Parameters
    ----------
    feats : int
        Node feature size :math:`D`.
    conv : str
        ``"node"`` (node-wise MLP), ``"cheb"`` (:class:`~dgl_iflow.layers.ChebConv`) or
        ``"l3"`` (:class:`~dgl_iflow.layers.L3Conv`, needs ``graph``).
    conv_feats : int
        Output channels :math:`H_0` of the convolution.
    hidden_feats : tuple of int
        Node-wise hidden widths after it.
    k : int
        Chebyshev terms of ``"cheb"``.
    orders : tuple of int
        Hop orders of ``"l3"``.
    lambda_max : float, optional
        Passed to ``ChebConv``; give it for graphs whose Laplacian spectrum is degenerate.
    node_bias : bool
        One bias per node in ``"l3"`` (see ``L3Conv``).
    activation : str
        ``"tanh"``, ``"softplus"``, ``"lipswish"`` or ``"elu"``.
    graph : GraphLike, optional
        The graph of ``"l3"``.
    """

    feats: int
    conv: str = "node"
    conv_feats: int = 64
    hidden_feats: tuple[int, ...] = (64,)
    k: int = 3
    orders: tuple[int, ...] = (0, 1, 2)
    lambda_max: float | None = None
    node_bias: bool = False
    activation: str = "tanh"
    graph: GraphLike | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.conv not in CONVS:
            raise ValueError(f"conv must be one of {tuple(CONVS)}, got {self.conv!r}")
        if CONVS[self.conv].needs_graph and self.graph is None:
            raise ValueError(f"conv={self.conv!r} builds per-node filters and needs the graph")

    def build(self, output_scale: float = 1.0) -> GraphVelocityField:
        """A fresh field (identity flow map), randomly initialized from the global RNG."""
        conv = make_conv(self.conv, self.feats, self.conv_feats, self.graph, cheb_k=self.k, lambda_max=self.lambda_max,
                         orders=self.orders, node_bias=self.node_bias)
        return GraphVelocityField(conv, self.hidden_feats, self.activation, output_scale)
