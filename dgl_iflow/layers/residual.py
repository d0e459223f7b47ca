"""The residual function of an invertible block: a graph convolution and node-wise layers."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._backend import dgl
from .activations import make_activation
from .basis_conv import BasisConv


class GraphResidual(nn.Module):
    r"""Residual function :math:`g` of an invertible block.

    .. math::
        g(X) = \sigma\big(\cdots \sigma\big(\mathrm{conv}(X)\big) W_1 + b_1 \cdots\big) W_L + b_L,

    a graph convolution from :math:`D` to :math:`H_0` channels followed by node-wise linear
    layers through ``hidden_feats`` back to :math:`D`, with a 1-Lipschitz activation after
    every layer but the last.

    Because the convolution has the form :math:`\sum_k A_k X W_k` and everything after it is
    node-wise, the Jacobian factorizes: with :math:`M_v = \partial g_v / \partial z_v`
    (:math:`D \times H_0`, a product of weight matrices and activation derivatives),
    :math:`\partial g_v / \partial x_u = \sum_k (A_k)_{vu} M_v W_k^\top`.
    :meth:`forward_with_jacobian` builds it with a few large matrix products.

    Parameters
    ----------
    conv : BasisConv
        Graph convolution from :math:`D` to :math:`H_0` channels.
    hidden_feats : sequence of int
        Widths of the node-wise hidden layers after the convolution.
    activation : str
        ``"lipswish"`` or ``"elu"``.
    """

    def __init__(self, conv: BasisConv, hidden_feats: Sequence[int] = (), activation: str = "lipswish") -> None:
        super().__init__()
        self.conv = conv
        widths = [conv.out_feats, *hidden_feats, conv.in_feats]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activations = nn.ModuleList(make_activation(activation) for _ in self.linears)

    @property
    def feats(self) -> int:
        return self.conv.in_feats

    def _pre_activations(self, graph: dgl.DGLGraph, x: Tensor) -> tuple[list[Tensor], Tensor]:
        hidden = [self.conv(graph, x)]
        for activation, linear in zip(self.activations[:-1], self.linears[:-1]):
            hidden.append(linear(activation(hidden[-1])))
        return hidden, self.linears[-1](self.activations[-1](hidden[-1]))

    def forward(self, graph: dgl.DGLGraph, x: Tensor) -> Tensor:
        """:math:`g(X)` for ``x`` of shape ``(V, *, D)``; same shape out."""
        return self._pre_activations(graph, x)[1]

    def forward_with_jacobian(self, graph: dgl.DGLGraph, x: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`g(X)` and its Jacobian per sample.

        Parameters
        ----------
        x : Tensor
            Shape ``(V, *, D)``.

        Returns
        -------
        tuple of Tensor
            ``g(x)`` of shape ``(V, *, D)`` and the Jacobian of shape ``(*, V D, V D)`` with
            row index ``v D + i`` (output node, channel) and column ``u D + j``.
        """
        num_nodes, feats = x.shape[0], x.shape[-1]
        batch_shape = x.shape[1:-1]
        hidden, out = self._pre_activations(graph, x.reshape(num_nodes, -1, feats))
        # Back-propagate the node-wise chain: local[v, b, i, :] = d out_{v,b,i} / d hidden_0[v, b, :].
        local = self.linears[-1].weight * self.activations[-1].derivative(hidden[-1]).unsqueeze(-2)
        for layer in range(len(hidden) - 2, -1, -1):
            local = (local @ self.linears[layer].weight) * self.activations[layer].derivative(hidden[layer]).unsqueeze(-2)
        conv_weight = self.conv.weight  # (K, D, H0)
        per_basis = (local @ conv_weight.permute(2, 0, 1).reshape(conv_weight.shape[2], -1))
        per_basis = per_basis.reshape(*local.shape[:3], conv_weight.shape[0], feats)  # (V, B, D, K, D)
        bases = self.conv.basis_matrices(graph).to(x.dtype)  # (K, V, V)
        jacobian = torch.einsum("kvu,vbikj->bviuj", bases, per_basis)
        size = num_nodes * feats
        return out.reshape(x.shape), jacobian.reshape(*batch_shape, size, size)
