"""The convolutions by name, as the models and velocity fields build them."""
from __future__ import annotations

from collections.abc import Sequence

from ..graphs import GraphLike
from .basis_conv import BasisConv
from .chebconv import ChebConv
from .l3conv import L3Conv
from .nodewise import NodewiseConv

#: ``"node"``: no message passing (:class:`NodewiseConv`); ``"cheb"``: spectral
#: (:class:`ChebConv`); ``"l3"``: spatial, per-node filters (:class:`L3Conv`).
CONVS = ("node", "cheb", "l3")


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

    ``graph`` is needed by ``"l3"`` (its filters are per node); ``cheb_k`` and ``lambda_max``
    belong to ``"cheb"``, ``orders`` and ``node_bias`` to ``"l3"``, ``graph_mean`` to both.
    """
    if kind == "node":
        return NodewiseConv(in_feats, out_feats)
    if kind == "cheb":
        return ChebConv(in_feats, out_feats, k=cheb_k, lambda_max=lambda_max, graph_mean=graph_mean)
    if kind == "l3":
        if graph is None:
            raise ValueError("conv='l3' builds per-node filters and needs the graph")
        return L3Conv(in_feats, out_feats, graph, orders=orders, node_bias=node_bias, graph_mean=graph_mean)
    raise ValueError(f"conv must be one of {CONVS}, got {kind!r}")
