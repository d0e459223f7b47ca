"""The convolutions by name, as the models, velocity fields and CLI build them.

Adding one is its file (a :class:`~dgl_iflow.layers.BasisConv` with a ``build`` classmethod)
and one line of :data:`CONVS`.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..graphs import GraphLike
from .basis_conv import BasisConv, ConvOptions
from .chebconv import ChebConv
from .l3conv import L3Conv
from .nodewise import NodewiseConv

#: ``"l3"``: spatial, per-node filters (:class:`L3Conv`); ``"cheb"``: spectral
#: (:class:`ChebConv`); ``"node"``: no message passing (:class:`NodewiseConv`).
CONVS: dict[str, type[BasisConv]] = {
    "l3": L3Conv,
    "cheb": ChebConv,
    "node": NodewiseConv,
}


def make_conv(
    kind: str,
    in_feats: int,
    out_feats: int,
    graph: GraphLike | None = None,
    *,
    cheb_k: int = 3,
    lambda_max: float | None = None,
    orders: Sequence[int] = (0, 1, 2),
    node_bias: bool = False,
    graph_mean: bool = False,
) -> BasisConv:
    """A fresh convolution of kind ``kind`` (see :data:`CONVS`), initialized from the global RNG.

    ``graph`` is needed by ``"l3"`` (its filters are per node); the options are
    :class:`~dgl_iflow.layers.basis_conv.ConvOptions`, each convolution taking its own.
    """
    if kind not in CONVS:
        raise ValueError(f"conv must be one of {tuple(CONVS)}, got {kind!r}")
    options = ConvOptions(cheb_k=cheb_k, lambda_max=lambda_max, orders=orders, node_bias=node_bias,
                          graph_mean=graph_mean)
    return CONVS[kind].build(in_feats, out_feats, graph, options)
