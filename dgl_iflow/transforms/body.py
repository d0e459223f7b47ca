"""The network shared by the residual functions and the velocity fields."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..layers.activations import make_activation
from ..layers.basis_conv import BasisConv


class ConvMLP(nn.Module):
    r"""A graph convolution from :math:`D` to :math:`H_0` channels, then node-wise layers back to :math:`D`.

    .. math::
        z_0 = \mathrm{conv}(X), \qquad z_l = \sigma(z_{l-1}) W_l^\top + b_l \quad (l = 1, \dots, L),

    through the widths :math:`H_1, \dots, H_{L-1}` of ``hidden_feats``, with an activation
    before every linear layer. Its parts are the attributes ``conv``, ``linears`` and
    ``activations`` (so they name the state dict entries); the subclasses add what their
    layers carry besides (spectral scaling, time) and evaluate the network themselves.

    Because :math:`\mathrm{conv}(X) = \sum_k A_k X W_k + b` and all else is node-wise, the
    derivative of node :math:`v`'s output with respect to node :math:`u`'s input is
    :math:`\sum_k (A_k)_{vu} M_v W_k^\top`, with :math:`M_v` the node-wise chain's Jacobian:
    the exact Jacobians and divergences of the subclasses rest on it.

    Parameters
    ----------
    conv : BasisConv
        Graph convolution from :math:`D` to :math:`H_0` channels, without an activation of its
        own (the activations belong to this module).
    hidden_feats : sequence of int
        Widths of the node-wise hidden layers after the convolution.
    activation : str
        Name in :data:`~dgl_iflow.layers.activations.ACTIVATIONS`, one fresh module per layer.
    """

    def __init__(self, conv: BasisConv, hidden_feats: Sequence[int], activation: str) -> None:
        super().__init__()
        if getattr(conv, "activation", None) is not None:
            raise ValueError(
                "the network applies its own activations and differentiates the convolution "
                "through its bases: pass a convolution without an activation"
            )
        self.conv = conv
        widths = [conv.out_feats, *hidden_feats, conv.in_feats]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activations = nn.ModuleList(make_activation(activation) for _ in self.linears)

    @property
    def feats(self) -> int:
        """Node feature size :math:`D`, in and out."""
        return self.conv.in_feats

    @property
    def widths(self) -> list[int]:
        r""":math:`H_0, \dots, H_{L-1}, D`: the output widths of the convolution and every linear layer."""
        return [self.conv.out_feats, *(linear.out_features for linear in self.linears)]
