"""A chain of invertible residual blocks."""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._backend import dgl
from .resblock import InvertibleResBlock


class FlowOutput(NamedTuple):
    """Result of :meth:`GraphFlow.forward`; every field but ``z`` has shape ``(*,)``."""

    z: Tensor
    logdet: Tensor | None
    transport_cost: Tensor


class GraphFlow(nn.Module):
    r"""Composition :math:`F = f_L \circ \cdots \circ f_1` of invertible residual blocks.

    .. math::
        \log|\det J_F(X)| = \sum_{l} \log|\det(I + J_{g_l}(X_{l-1}))|, \qquad
        W(X) = \sum_l \|X_l - X_{l-1}\|^2,

    the second being the transport cost that keeps each block close to the identity.

    Parameters
    ----------
    blocks : iterable of InvertibleResBlock
        Applied in order by :meth:`forward`, in reverse by :meth:`inverse`.
    """

    def __init__(self, blocks: Iterable[InvertibleResBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ValueError("GraphFlow needs at least one block")

    def forward(self, graph: dgl.DGLGraph, x: Tensor, jac: bool = True) -> FlowOutput:
        """Map ``x`` of shape ``(V, *, D)`` to the latent ``z`` of the same shape.

        Returns the latent, the summed log-determinant (``None`` unless ``jac``) and the
        summed transport cost, each per sample.
        """
        logdet = None
        transport = torch.zeros(x.shape[1:-1], dtype=x.dtype, device=x.device)
        for block in self.blocks:
            y, block_logdet = block(graph, x, jac=jac)
            if block.counts_transport:
                transport = transport + (y - x).pow(2).sum(dim=(0, -1))
            if jac:
                logdet = block_logdet if logdet is None else logdet + block_logdet
            x = y
        return FlowOutput(x, logdet, transport)

    @torch.no_grad()
    def inverse(
        self,
        graph: dgl.DGLGraph,
        z: Tensor,
        tol: float = 1e-6,
        max_iter: int = 200,
        on_failure: str = "raise",
    ) -> Tensor:
        """Invert block by block in reverse order; see :meth:`InvertibleResBlock.inverse`."""
        for block in reversed(self.blocks):
            z = block.inverse(graph, z, tol=tol, max_iter=max_iter, on_failure=on_failure)
        return z

    def set_logdet_mode(self, mode: str) -> None:
        """Switch every block to ``"exact"`` or ``"estimator"``."""
        for block in self.blocks:
            block.set_logdet_mode(mode)
