r"""Spectral normalization of graph convolutions and linear layers by power iteration.

A layer's operator norm :math:`\sigma` is estimated as :math:`\hat\sigma = l^\top M r` from
singular-vector estimates :math:`l, r` that the caller keeps (as buffers) and these functions
advance in place; the layer is then scaled by :math:`\min(1, c / \hat\sigma)`, differentiable
through :math:`\hat\sigma` with the vectors held constant.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..graphs import GraphLike
from ..layers.basis_conv import BasisConv

#: Power iterations run when a singular-vector estimate is (re)started, and their stopping rule.
WARMUP_ITERATIONS = 200
WARMUP_RTOL = 1e-7


def unit(vector: Tensor) -> Tensor:
    return vector / vector.norm().clamp_min(torch.finfo(vector.dtype).tiny)


@torch.no_grad()
def power_iterate(
    apply: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
    left: Tensor, right: Tensor, steps: int, converge: bool,
) -> None:
    """Advance the singular vectors ``left``, ``right`` of the linear map ``apply`` in place."""
    sigma = None
    for _ in range(steps):
        new_left = unit(apply(right))
        new_right = unit(adjoint(new_left))
        left.copy_(new_left)
        right.copy_(new_right)
        if converge:
            new_sigma = float((left * apply(right)).sum())
            if sigma is not None and abs(new_sigma - sigma) <= WARMUP_RTOL * abs(new_sigma):
                break
            sigma = new_sigma


def _advance(
    apply: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor], left: Tensor, right: Tensor, steps: int,
) -> None:
    """From a random start to convergence where ``right`` is all zeros (never started), else ``steps`` iterations."""
    if not bool(right.any()):
        right.copy_(unit(torch.randn(right.shape, dtype=right.dtype, device=right.device)))
        power_iterate(apply, adjoint, left, right, WARMUP_ITERATIONS, converge=True)
    elif steps:
        power_iterate(apply, adjoint, left, right, steps, converge=False)


def linear_scale(weight: Tensor, left: Tensor, right: Tensor, coeff: float, steps: int) -> Tensor:
    r""":math:`\min(1, c / \hat\sigma)` of the matrix ``weight`` ``(O, I)``, with vectors ``(O,)``, ``(I,)``."""
    matrix = weight.detach()
    _advance(lambda r: matrix @ r, lambda l: matrix.T @ l, left, right, steps)
    sigma = left.to(weight.dtype) @ weight @ right.to(weight.dtype)
    return coeff / sigma.clamp_min(coeff)


def conv_scale(conv: BasisConv, graph: GraphLike, left: Tensor, right: Tensor, coeff: float, steps: int) -> Tensor:
    r""":math:`\min(1, c / \hat\sigma)` of ``conv.linear_part`` as a linear map on :math:`\mathbb{R}^{V \times C_{in}}`,
    with vectors ``(V, C_out)``, ``(V, C_in)``."""
    dtype = conv.weight.dtype

    def apply(vector: Tensor) -> Tensor:
        return conv.linear_part(graph, vector.to(dtype))

    def adjoint(vector: Tensor) -> Tensor:
        # The adjoint of the linear map, as a vector-Jacobian product at zero.
        with torch.enable_grad():
            point = torch.zeros_like(right, dtype=dtype).requires_grad_(True)
            return torch.autograd.grad(apply(point), point, vector.to(dtype))[0]

    _advance(apply, adjoint, left, right, steps)
    sigma = (left.to(dtype) * apply(right)).sum()
    return coeff / sigma.clamp_min(coeff)


def norm_product(
    conv: BasisConv, graph: GraphLike, conv_scale: Tensor | float,
    weights: Sequence[Tensor], scales: Sequence[Tensor | float],
) -> float:
    r""":math:`\prod_l \|W_l\|_2` over the scaled convolution and linear layers, from norms computed
    exactly (dense SVD of the convolution's ``(V C_out, V C_in)`` matrix: for small graphs only)."""
    bases = conv.operator_matrices(graph)  # (K, V, V)
    conv_weight = conv.weight  # (K, C_in, C_out)
    num_nodes = bases.shape[1]
    # Row (v, o), column (u, i): sum_k (A_k)_{vu} (W_k)_{io}.
    matrix = torch.einsum("kvu,kio->voui", bases, conv_weight).reshape(num_nodes * conv_weight.shape[2], -1)
    bound = float(torch.linalg.matrix_norm(matrix * conv_scale, ord=2))
    for scale, weight in zip(scales, weights):
        bound *= float(torch.linalg.matrix_norm(weight * scale, ord=2))
    return bound
