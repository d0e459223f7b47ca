r"""Divergence :math:`\operatorname{tr} \partial f / \partial x` of any velocity by autograd.

Both functions take the field as a closure of ``x`` of shape ``(V, B, D)`` and rely on samples
being independent (the field mixes nodes and channels, never samples), so one vector-Jacobian
product serves the whole batch.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Closure = Callable[[Tensor], Tensor]


def _differentiable_input(x: Tensor) -> Tensor:
    # A data tensor, or one built without grad (inference), gets a fresh leaf to differentiate.
    return x if x.requires_grad else x.detach().requires_grad_(True)


def autograd_divergence(fn: Closure, x: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    r"""Exact divergence from :math:`V D` vector-Jacobian products, for small :math:`V D`.

    .. math::
        \operatorname{div} f(x) = \sum_{v, i} \frac{\partial f_{v i}}{\partial x_{v i}}

    Parameters
    ----------
    fn : callable
        ``x -> f(x)``, shape ``(V, B, D)`` in and out.
    x : Tensor
        Shape ``(V, B, D)``.
    create_graph : bool
        Keep the result differentiable (training).

    Returns
    -------
    tuple of Tensor
        ``f(x)`` of shape ``(V, B, D)`` and the divergence of shape ``(B,)``.
    """
    with torch.enable_grad():
        x_in = _differentiable_input(x)
        out = fn(x_in)
        num_nodes, _, feats = x.shape
        divergence = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        for node in range(num_nodes):
            for channel in range(feats):
                grad = torch.autograd.grad(
                    out[node, :, channel].sum(), x_in, retain_graph=True, create_graph=create_graph
                )[0]
                divergence = divergence + grad[node, :, channel]
    if not create_graph:
        return out.detach(), divergence.detach()
    return out, divergence


def make_probes(x: Tensor, n_probes: int, generator: torch.Generator | None = None) -> Tensor:
    """``n_probes`` Rademacher vectors shaped like ``x``: ``(n_probes, *x.shape)``.

    Rademacher probes have the smallest variance among Hutchinson probes with i.i.d. entries.
    """
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    bits = torch.randint(0, 2, (n_probes, *x.shape), generator=generator, device=x.device)
    return (2 * bits - 1).to(x.dtype)


def hutchinson_divergence(fn: Closure, x: Tensor, probes: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    r"""Unbiased Hutchinson estimate of the divergence, for any :math:`V D`.

    .. math::
        \operatorname{div} f(x) = \mathbb{E}_\varepsilon\,
        \varepsilon^\top \frac{\partial f}{\partial x} \varepsilon
        \approx \frac{1}{P} \sum_{p=1}^{P} \varepsilon_p^\top J \varepsilon_p

    Parameters
    ----------
    fn : callable
        ``x -> f(x)``, shape ``(V, B, D)`` in and out.
    x : Tensor
        Shape ``(V, B, D)``.
    probes : Tensor
        ``(P, V, B, D)`` probes with :math:`\mathbb{E}\,\varepsilon\varepsilon^\top = I`,
        e.g. from :func:`make_probes`.
    create_graph : bool
        Keep the result differentiable (training).

    Returns
    -------
    tuple of Tensor
        ``f(x)`` of shape ``(V, B, D)`` and the estimate of shape ``(B,)``.
    """
    with torch.enable_grad():
        x_in = _differentiable_input(x)
        out = fn(x_in)
        estimate = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        for probe in probes:
            grad = torch.autograd.grad(out, x_in, probe, retain_graph=True, create_graph=create_graph)[0]
            estimate = estimate + (grad * probe).sum(dim=(0, 2))
    estimate = estimate / len(probes)
    if not create_graph:
        return out.detach(), estimate.detach()
    return out, estimate
