"""Activations: closed-form derivatives vs autograd, and Lipschitz constants at most 1."""

import pytest
import torch

from dgl_iflow.layers import ELU, LipSwish
from dgl_iflow.layers.activations import make_activation


@pytest.mark.parametrize("activation", [LipSwish(0.3), LipSwish(1.0), LipSwish(7.0), ELU()])
def test_derivative_matches_autograd(activation):
    activation = activation.double()
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(activation(x).sum(), x)
    torch.testing.assert_close(activation.derivative(x.detach()), grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [0.01, 0.5, 1.0, 3.0, 100.0])
def test_lipswish_is_1_lipschitz_and_close_to_it(beta):
    act = LipSwish(beta).double()
    assert act.beta.item() == pytest.approx(beta, rel=1e-6)  # stored in float32
    assert torch.isfinite(act(torch.tensor([0.0, 1e-3, -1e3], dtype=torch.float64))).all()
    x = torch.linspace(-50 / beta, 50 / beta, 200001, dtype=torch.float64)
    slope = act.derivative(x).abs().max().item()
    assert 0.99 < slope <= 1.0  # the maximum slope of x sigmoid(beta x) is 1.0998...


def test_elu_slope_at_most_one():
    x = torch.linspace(-20, 20, 10001, dtype=torch.float64)
    d = ELU().derivative(x)
    assert d.max().item() == 1.0 and d.min().item() > 0


def test_beta_is_learnable():
    act = LipSwish()
    x = torch.randn(10)
    act(x).sum().backward()
    assert act.raw_beta.grad is not None and act.raw_beta.grad.abs().item() > 0


def test_beta_must_be_positive():
    for beta in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta must be positive"):
            LipSwish(beta)


def test_make_activation():
    assert isinstance(make_activation("lipswish"), LipSwish)
    assert isinstance(make_activation("elu"), ELU)
    assert make_activation("elu") is not make_activation("elu")
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        make_activation("relu")
