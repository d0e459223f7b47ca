"""Elementwise activations with Lipschitz constant at most 1 and closed-form derivatives.

Every activation returns its value and derivative together (:meth:`Activation.value_and_derivative`),
which lets the invertible blocks assemble exact Jacobians, and the velocity fields exact
divergences, without autograd loops.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The largest slope of :math:`x\,\mathrm{sigmoid}(\beta x)`, 1.0998 for any :math:`\beta > 0`,
#: rounded up: LipSwish divides by it.
LIPSWISH_DIVISOR = 1.1


class Activation(nn.Module, ABC):
    r"""An elementwise activation :math:`\sigma` that also gives :math:`\sigma'`."""

    #: Registry name (:data:`ACTIVATIONS`), and how kernels that hard-code the formula
    #: (``transforms/jacobian.py``) recognize it: a subclass that changes the function must
    #: rename it.
    kind: ClassVar[str]

    @abstractmethod
    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\sigma(x)` and :math:`\sigma'(x)`, sharing their common terms."""


class Tanh(Activation):
    r""":math:`\tanh`: Lipschitz constant 1 (the slope at 0), smooth (:math:`C^\infty`).

    Its derivative :math:`1 - \tanh^2` costs one more operation than the value.
    """

    kind = "tanh"

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        value = torch.tanh(x)
        return value, 1.0 - value * value


class Softplus(Activation):
    r""":math:`\log(1 + e^x)`: Lipschitz constant 1 (its slope :math:`\mathrm{sigmoid}(x) < 1`),
    smooth (:math:`C^\infty`)."""

    kind = "softplus"

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.softplus(x), torch.sigmoid(x)


class LipSwish(Activation):
    r"""LipSwish (Chen et al., 2019): :math:`x\,\mathrm{sigmoid}(\beta x) / 1.1`, Lipschitz
    constant 1, smooth (:math:`C^\infty`).

    The slope of :math:`x\,\mathrm{sigmoid}(\beta x)` never exceeds 1.0998 for any
    :math:`\beta > 0`, so dividing by 1.1 makes the activation 1-Lipschitz;
    :math:`\beta = \mathrm{softplus}(\rho)` is learned.
    """

    kind = "lipswish"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        # Inverse softplus, beta + log(1 - exp(-beta)), in float64: log(expm1(beta)) overflows
        # float32 for beta > 88.
        beta64 = torch.tensor(float(beta), dtype=torch.float64)
        self.raw_beta = nn.Parameter((beta64 + torch.log(-torch.expm1(-beta64))).to(torch.get_default_dtype()))

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x) / LIPSWISH_DIVISOR

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta
        s = torch.sigmoid(beta * x)
        return x * s / LIPSWISH_DIVISOR, (s + beta * x * s * (1 - s)) / LIPSWISH_DIVISOR


class ELU(Activation):
    r"""ELU with :math:`\alpha = 1`: Lipschitz constant 1, :math:`C^1` but not :math:`C^2`
    (:math:`\sigma''` jumps from 1 to 0 at 0, which costs RK4 its fourth order)."""

    kind = "elu"

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.elu(x), torch.where(x > 0, torch.ones_like(x), torch.exp(x.clamp(max=0)))


ACTIVATIONS: dict[str, type[Activation]] = {cls.kind: cls for cls in (Tanh, Softplus, LipSwish, ELU)}


def make_activation(name: str) -> Activation:
    """A fresh activation by name: ``"tanh"``, ``"softplus"``, ``"lipswish"`` or ``"elu"``."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None
