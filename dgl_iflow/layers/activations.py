"""Activations with Lipschitz constant at most 1 and closed-form derivatives.

The derivatives let the invertible blocks assemble exact Jacobians without autograd loops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The largest slope of :math:`x\,\mathrm{sigmoid}(\beta x)`, 1.0998 for any :math:`\beta > 0`,
#: rounded up: LipSwish divides by it.
LIPSWISH_DIVISOR = 1.1


class LipSwish(nn.Module):
    r"""LipSwish (Chen et al., 2019): :math:`x\,\mathrm{sigmoid}(\beta x) / 1.1`.

    The slope of :math:`x\,\mathrm{sigmoid}(\beta x)` never exceeds 1.0998 for any
    :math:`\beta > 0`, so dividing by 1.1 makes the activation 1-Lipschitz;
    :math:`\beta = \mathrm{softplus}(\rho)` is learned.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        # Inverse softplus, beta + log(1 - exp(-beta)), in float64: log(expm1(beta)) overflows
        # float32 for beta > 88.
        beta64 = torch.tensor(float(beta), dtype=torch.float64)
        self.raw_beta = nn.Parameter((beta64 + torch.log(-torch.expm1(-beta64))).float())

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x) / LIPSWISH_DIVISOR

    def derivative(self, x: Tensor) -> Tensor:
        beta = self.beta
        s = torch.sigmoid(beta * x)
        return (s + beta * x * s * (1 - s)) / LIPSWISH_DIVISOR


class ELU(nn.Module):
    r"""ELU with :math:`\alpha = 1`, which is 1-Lipschitz."""

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.ones_like(x), torch.exp(x.clamp(max=0)))


ACTIVATIONS = {"lipswish": LipSwish, "elu": ELU}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name: ``"lipswish"`` or ``"elu"``."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None
