"""Time-dependent velocity fields on graph node features, with an exact divergence."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._backend import dgl
from ..layers import ChebConv, L3Conv
from ..layers.activations import ACTIVATIONS as LAYER_ACTIVATIONS
from ..layers.basis_conv import BasisConv

CONVS = ("node", "cheb", "l3")


class Tanh(nn.Module):
    r""":math:`\tanh`, whose derivative :math:`1 - \tanh^2` costs one more operation."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        value = torch.tanh(x)
        return value, 1.0 - value * value


class Softplus(nn.Module):
    r""":math:`\log(1 + e^x)`, with derivative :math:`\mathrm{sigmoid}(x)`."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return nn.functional.softplus(x), torch.sigmoid(x)


#: Smooth activations keep RK4 at fourth order; the layers' ``"elu"`` has a kink in its derivative.
ACTIVATIONS = {"tanh": Tanh, "softplus": Softplus, **LAYER_ACTIVATIONS}


def make_activation(name: str) -> nn.Module:
    """A fresh activation by name: ``"tanh"``, ``"softplus"``, ``"lipswish"`` or ``"elu"``."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def value_and_derivative(activation: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``activation(x)`` and its elementwise derivative, sharing work where the activation can."""
    if isinstance(activation, (Tanh, Softplus)):
        return activation.value_and_derivative(x)
    return activation(x), activation.derivative(x)


class NodewiseConv(BasisConv):
    r"""Node-wise linear layer :math:`Y = X W + b` written as a one-basis :class:`BasisConv`.

    Its single node operator is :math:`A_1 = I`, so a field built on it is a plain MLP applied
    to every node, and the exact divergence below covers it with no special case.
    """

    def __init__(self, in_feats: int, out_feats: int, bias: bool = True) -> None:
        super().__init__(in_feats, out_feats, num_bases=1, bias=bias)
        self.reset_parameters()

    def apply_bases(self, graph: dgl.DGLGraph, feat: Tensor, edge_weight: Tensor | None) -> Tensor:
        return feat.unsqueeze(0)

    def basis_matrices(self, graph: dgl.DGLGraph, edge_weight: Tensor | None = None) -> Tensor:
        identity = torch.eye(graph.num_nodes(), dtype=self.weight.dtype, device=self.weight.device)
        return identity.unsqueeze(0)


def basis_diagonals(conv: BasisConv, graph: dgl.DGLGraph) -> Tensor:
    r"""Diagonals :math:`(A_k)_{vv}` of the node operators, shape ``(K, V)``, differentiable."""
    if isinstance(conv, NodewiseConv):
        return torch.ones(1, graph.num_nodes(), dtype=conv.weight.dtype, device=conv.weight.device)
    return conv.operator_matrices(graph).diagonal(dim1=1, dim2=2)


class GraphVelocityField(nn.Module):
    r"""Velocity :math:`f_\theta(X, t)` of node features: a graph convolution, then node-wise layers.

    .. math::
        z_0 = \mathrm{conv}(X) + t\, c_0, \qquad
        z_l = \sigma(z_{l-1}) W_l^\top + b_l + t\, c_l \quad (l = 1, \dots, L), \qquad
        f_\theta(X, t) = z_L,

    with :math:`\mathrm{conv}(X) = \sum_k A_k X W_k + b_0` a :class:`BasisConv` from :math:`D`
    to :math:`H_0` channels and node-wise linear layers through ``hidden_feats`` back to
    :math:`D`. Time enters every layer linearly, so an affine change of the time variable is
    absorbed exactly into the biases (:meth:`retime`).

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
        First layer, from :math:`D` to :math:`H_0` channels, with a bias.
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
        super().__init__()
        self.output_scale = float(output_scale)
        if conv.bias is None:
            raise ValueError("the convolution needs a bias: retime() absorbs time shifts into it")
        self.conv = conv
        widths = [conv.out_feats, *hidden_feats, conv.in_feats]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activations = nn.ModuleList(make_activation(activation) for _ in self.linears)
        self.time_weights = nn.ParameterList(nn.Parameter(torch.zeros(w)) for w in widths)
        nn.init.zeros_(self.linears[-1].weight)
        nn.init.zeros_(self.linears[-1].bias)

    @property
    def feats(self) -> int:
        return self.conv.in_feats

    def _biases(self) -> list[Tensor]:
        return [self.conv.bias, *(linear.bias for linear in self.linears)]

    def forward(self, graph: dgl.DGLGraph, x: Tensor, t: float | Tensor) -> Tensor:
        """:math:`f_\\theta(x, t)` for ``x`` of shape ``(V, *, D)``; same shape out."""
        z = self.conv(graph, x) + t * self.time_weights[0]
        for activation, linear, time_weight in zip(self.activations, self.linears, self.time_weights[1:]):
            z = linear(activation(z)) + t * time_weight
        return self.output_scale * z

    def divergence_context(self, graph: dgl.DGLGraph) -> Tensor:
        r"""Self-loop weight :math:`\sum_k (A_k)_{vv} W_k`, shape ``(V, D, H_0)``.

        Constant along one integration, so blocks compute it once per call.
        """
        diagonals = basis_diagonals(self.conv, graph)
        return torch.einsum("kv,kdh->vdh", diagonals, self.conv.weight)

    def forward_with_divergence(
        self, graph: dgl.DGLGraph, x: Tensor, t: float | Tensor, context: Tensor
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
            value, slope = value_and_derivative(activation, z)
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
    graph : DGLGraph, optional
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
    graph: dgl.DGLGraph | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {self.conv!r}")
        if self.conv == "l3" and self.graph is None:
            raise ValueError("conv='l3' builds per-node filters and needs the graph")

    def build(self, output_scale: float = 1.0) -> GraphVelocityField:
        """A fresh field (identity flow map), randomly initialized from the global RNG."""
        if self.conv == "node":
            conv: BasisConv = NodewiseConv(self.feats, self.conv_feats)
        elif self.conv == "cheb":
            conv = ChebConv(self.feats, self.conv_feats, k=self.k, lambda_max=self.lambda_max)
        else:
            conv = L3Conv(self.feats, self.conv_feats, self.graph, orders=self.orders, node_bias=self.node_bias)
        return GraphVelocityField(conv, self.hidden_feats, self.activation, output_scale)
