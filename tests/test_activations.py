"""Activations: closed-form derivatives vs autograd, Lipschitz constants at most 1, the registry."""

import pytest
import torch

from dgl_iflow.layers import ACTIVATIONS, ELU, Activation, LipSwish, Softplus, Tanh, make_activation


@pytest.mark.parametrize("activation", [Tanh(), Softplus(), LipSwish(0.3), LipSwish(1.0), LipSwish(7.0), ELU()])
def test_value_and_derivative_match_forward_and_autograd(activation):
    activation = activation.double()
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    forward = activation(x)
    (grad,) = torch.autograd.grad(forward.sum(), x)
    value, derivative = activation.value_and_derivative(x.detach())
    torch.testing.assert_close(value, forward.detach(), rtol=0, atol=0)
    torch.testing.assert_close(derivative, grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "softplus", "lipswish", "elu"])
def test_every_registry_name_builds_a_fresh_activation_of_its_kind(name):
    activation = make_activation(name)
    assert isinstance(activation, Activation) and activation.kind == name
    assert type(activation) is ACTIVATIONS[name]
    assert make_activation(name) is not activation


def test_registry_is_the_four_activations():
    assert ACTIVATIONS == {"tanh": Tanh, "softplus": Softplus, "lipswish": LipSwish, "elu": ELU}
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        make_activation("relu")


@pytest.mark.parametrize("name", ["tanh", "softplus"])
def test_smooth_activations_have_slope_at_most_one(name):
    x = torch.linspace(-20, 20, 10001, dtype=torch.float64)
    slope = make_activation(name).value_and_derivative(x)[1]
    assert slope.max().item() <= 1.0 and slope.min().item() >= 0


@pytest.mark.parametrize("beta", [0.01, 0.5, 1.0, 3.0, 100.0])
def test_lipswish_is_1_lipschitz_and_close_to_it(beta):
    act = LipSwish(beta).double()
    assert act.beta.item() == pytest.approx(beta, rel=1e-6)  # stored in float32
    assert torch.isfinite(act(torch.tensor([0.0, 1e-3, -1e3], dtype=torch.float64))).all()
    x = torch.linspace(-50 / beta, 50 / beta, 200001, dtype=torch.float64)
    slope = act.value_and_derivative(x)[1].abs().max().item()
    assert 0.99 < slope <= 1.0  # the maximum slope of x sigmoid(beta x) is 1.0998...


def test_elu_slope_at_most_one():
    x = torch.linspace(-20, 20, 10001, dtype=torch.float64)
    d = ELU().value_and_derivative(x)[1]
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
