"""Composition of invertible graph transforms."""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..graphs import GraphLike
from .base import GraphTransform


class FlowOutput(NamedTuple):
    """Result of :meth:`GraphFlow.forward_with_transport`; every field but ``z`` has shape ``(*,)``."""

    z: Tensor
    logdet: Tensor | None
    transport_cost: Tensor


class GraphFlow(GraphTransform):
    r"""Composition :math:`F = T_L \circ \cdots \circ T_1` of :class:`GraphTransform` units.

    .. math::
        \log|\det J_F(X)| = \sum_{l} \log|\det J_{T_l}(X_{l-1})|, \qquad
        W(X) = \sum_{l\,:\,\text{counts transport}} \|X_l - X_{l-1}\|^2,

    the second being the transport cost that keeps residual and ODE blocks close to the
    identity. Without units it is the identity map (a JKO flow before its first block).

    Parameters
    ----------
    blocks : iterable of GraphTransform
        Applied in order by :meth:`forward`, in reverse by :meth:`inverse`.
    """

    def __init__(self, blocks: Iterable[GraphTransform] = ()) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward_with_transport(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> FlowOutput:
        """The latent ``z`` of ``x`` (both ``(V, *, D)``), the summed log-det and transport cost per sample."""
        total = torch.zeros(x.shape[1:-1], dtype=x.dtype, device=x.device) if logdet else None
        transport = torch.zeros(x.shape[1:-1], dtype=x.dtype, device=x.device)
        for block in self.blocks:
            y, block_logdet = block(graph, x, logdet=logdet)
            if block.counts_transport:
                transport = transport + (y - x).pow(2).sum(dim=(0, -1))
            if logdet:
                total = total + block_logdet
            x = y
        return FlowOutput(x, total, transport)

    def forward(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """Every unit in order; see :class:`GraphTransform`."""
        z, total, _ = self.forward_with_transport(graph, x, logdet)
        return z, total

    def inverse(
        self, graph: GraphLike, y: Tensor, logdet: bool = False, *,
        tol: float = 1e-6, max_iter: int = 200, on_failure: str = "raise",
    ) -> tuple[Tensor, Tensor | None]:
        """Every unit's inverse in reverse order, each to ``tol``; see :class:`GraphTransform`."""
        total = torch.zeros(y.shape[1:-1], dtype=y.dtype, device=y.device) if logdet else None
        for block in reversed(self.blocks):
            y, block_logdet = block.inverse(graph, y, logdet, tol=tol, max_iter=max_iter, on_failure=on_failure)
            if logdet:
                total = total + block_logdet
        return y, total

    @torch.no_grad()
    def initialize_from_data(self, graph: GraphLike, x: Tensor) -> None:
        """Initialize every unit in order on what reaches it from ``x`` ``(V, N, D)``.

        ``x`` goes through the flow only as far as the last unit with an initialization of its own.
        """
        needing = [i for i, block in enumerate(self.blocks)
                   if type(block).initialize_from_data is not GraphTransform.initialize_from_data]
        for block in self.blocks[: needing[-1] + 1] if needing else ():
            block.initialize_from_data(graph, x)
            x = block(graph, x, logdet=False)[0]

    def set_logdet_mode(self, mode: str) -> None:
        """Switch every unit that offers both to ``"exact"`` or ``"estimator"``."""
        for block in self.blocks:
            block.set_logdet_mode(mode)
