"""Log-determinants: exact slogdet, the roulette survival function, and the power-series estimator
on a linear residual g(x) = x A whose log det(I + A) is known in closed form."""

import math

import numpy as np
import pytest
import torch

from dgl_iflow.transforms import exact_logdet, power_series_logdet
from dgl_iflow.transforms.logdet import roulette_survival


V, D, B = 3, 2, 64
N = V * D


def contraction(norm: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(N, N, generator=gen, dtype=torch.float64)
    return a * norm / torch.linalg.matrix_norm(a, ord=2)


def linear_residual(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """g(x) = vec(x_b) A for every sample b of x of shape (V, B, D); its Jacobian is A^T."""
    flat = x.transpose(0, 1).reshape(x.shape[1], N)
    return (flat @ a).reshape(x.shape[1], V, D).transpose(0, 1)


def linear_jvp(a: torch.Tensor):
    """``v -> J v`` of the linear residual: the residual itself, with ``a`` detached unless differentiable."""
    return lambda vector, differentiable: linear_residual(vector, a if differentiable else a.detach())


def draws(a: torch.Tensor, calls: int, seed: int, **options) -> torch.Tensor:
    """Per-call batch means of the estimate; calls are independent, samples within one share N."""
    torch.manual_seed(seed)
    means = []
    for _ in range(calls):
        x = torch.randn(V, B, D, dtype=torch.float64, requires_grad=True)
        estimate = power_series_logdet(linear_jvp(a), x, sample_dims=(1,), create_graph=False, **options)
        assert estimate.shape == (B,)
        means.append(estimate.mean())
    return torch.stack(means)


def test_roulette_survival_closed_form():
    for n_exact, p in [(0, 0.5), (2, 0.5), (3, 0.2), (1, 0.9)]:
        survival = roulette_survival(10, n_exact, p)
        expected = [1.0 if k <= n_exact else (1 - p) ** (k - n_exact) for k in range(11)]
        np.testing.assert_allclose(survival.numpy(), expected, rtol=1e-15)


def test_roulette_survival_matches_sampled_truncation():
    """The sampler in power_series_logdet draws N = n_exact + Geometric(p) with P(G = j) = (1-p)^j p."""
    torch.manual_seed(0)
    n_exact, p, draws_ = 2, 0.4, 40000
    samples = n_exact + torch.distributions.Geometric(probs=p).sample((draws_,))
    survival = roulette_survival(8, n_exact, p)
    for k in range(9):
        freq = (samples >= k).double().mean().item()
        se = math.sqrt(survival[k] * (1 - survival[k]) / draws_) + 1e-12
        assert abs(freq - survival[k].item()) <= 4 * se


def test_exact_logdet_is_log_abs_det():
    gen = torch.Generator().manual_seed(1)
    jac = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    out = exact_logdet(jac)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, torch.det(eye + jac).abs().log(), rtol=1e-10, atol=1e-10)
    negative = -2 * eye.clone()  # det(I + J) = (-1)^5
    assert exact_logdet(negative).item() == pytest.approx(0.0, abs=1e-12)


def test_exact_logdet_gauss_jordan_matches_lapack_without_calling_it(monkeypatch):
    """Contractive Jacobians (Lip < 1) go through the pivot-free elimination alone: values and
    gradients equal slogdet's, and LAPACK is never called."""
    gen = torch.Generator().manual_seed(2)
    jac = torch.randn(50, 30, 30, generator=gen, dtype=torch.float64)
    jac = 0.95 * jac / torch.linalg.matrix_norm(jac, ord=2)[:, None, None]
    expected = torch.linalg.slogdet(torch.eye(30, dtype=torch.float64) + jac).logabsdet
    expected_grad = torch.linalg.inv(torch.eye(30, dtype=torch.float64) + jac).mT

    def forbidden(*args, **kwargs):
        raise AssertionError("LAPACK fallback used on a contractive Jacobian")

    monkeypatch.setattr(torch.linalg, "slogdet", forbidden)
    monkeypatch.setattr(torch.linalg, "inv_ex", forbidden)
    leaf = jac.clone().requires_grad_(True)
    out = exact_logdet(leaf)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


def test_exact_logdet_falls_back_to_pivoting_where_elimination_cannot():
    """I + J with a zero leading pivot (a row swap) and a nearly singular one: the pivoted LU
    takes over for those samples only; values and gradients still match slogdet."""
    eye = torch.eye(4, dtype=torch.float64)
    swap = eye[[1, 0, 2, 3]]
    near = eye.clone()
    near[0, 0] = 1e-9
    near[0, 1] = near[1, 0] = 1.0
    gen = torch.Generator().manual_seed(3)
    easy = eye + 0.1 * torch.randn(4, 4, generator=gen, dtype=torch.float64)
    matrices = torch.stack([swap, near, easy])
    leaf = (matrices - eye).requires_grad_(True)
    out = exact_logdet(leaf)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    torch.testing.assert_close(out, torch.linalg.slogdet(matrices).logabsdet, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, torch.linalg.inv(matrices).mT, rtol=1e-8, atol=1e-8)


def test_exact_logdet_gradcheck():
    gen = torch.Generator().manual_seed(4)
    jac = (0.3 * torch.randn(3, 2, 5, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(exact_logdet, (jac,))


@pytest.mark.parametrize("n_exact, p, n_probes", [(2, 0.5, 1), (1, 0.3, 2), (0, 0.5, 1)])
def test_estimator_is_unbiased_on_linear_residual(n_exact, p, n_probes):
    a = contraction(0.3, seed=2)
    exact = torch.logdet(torch.eye(N, dtype=torch.float64) + a).item()
    means = draws(a, 400, seed=3, n_exact_terms=n_exact, stop_probability=p, n_probes=n_probes)
    se = means.std().item() / math.sqrt(len(means))
    assert abs(means.mean().item() - exact) <= 3 * se, (means.mean().item(), exact, se)
    assert se < 0.05  # a meaningful test: the standard error is small next to |exact|
    assert abs(exact) > 0.1


def test_deterministic_truncation_is_biased_series():
    """stop_probability = 1 truncates at exactly n_exact terms: the mean is the truncated series."""
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(0.5, 0.8, N, dtype=torch.float64)) @ q.T
    jac = a.T
    truncated = sum((-1) ** (k + 1) / k * torch.trace(torch.linalg.matrix_power(jac, k)) for k in range(1, 3)).item()
    exact = torch.logdet(torch.eye(N, dtype=torch.float64) + a).item()
    means = draws(a, 300, seed=5, n_exact_terms=2, stop_probability=1.0)
    se = means.std().item() / math.sqrt(len(means))
    assert abs(means.mean().item() - truncated) <= 3 * se
    assert abs(truncated - exact) > 10 * se


def _gradient_draws(a, calls, seed, neumann):
    torch.manual_seed(seed)
    grads = []
    for _ in range(calls):
        a_leaf = a.clone().requires_grad_(True)
        x = torch.randn(V, B, D, dtype=torch.float64, requires_grad=True)
        estimate = power_series_logdet(linear_jvp(a_leaf), x, sample_dims=(1,), neumann_gradient=neumann)
        (grad,) = torch.autograd.grad(estimate.mean(), a_leaf)
        grads.append(grad)
    return torch.stack(grads)


@pytest.mark.parametrize("neumann", [True, False])
def test_gradient_estimators_are_unbiased(neumann):
    a = contraction(0.3, seed=6)
    a_leaf = a.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(torch.logdet(torch.eye(N, dtype=torch.float64) + a_leaf), a_leaf)
    grads = _gradient_draws(a, 300, seed=7, neumann=neumann)
    directions = torch.randn(4, N, N, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    projected = torch.einsum("cij,kij->ck", grads, directions)
    target = torch.einsum("ij,kij->k", exact, directions)
    se = projected.std(dim=0) / math.sqrt(len(grads))
    assert ((projected.mean(dim=0) - target).abs() <= 3 * se).all(), (projected.mean(0), target, se)
    assert (se < 0.1 * target.abs().max()).all()


def test_value_does_not_depend_on_gradient_mode_and_detaches():
    a = contraction(0.5, seed=9)
    x = torch.randn(V, B, D, dtype=torch.float64, requires_grad=True)
    values = []
    for neumann, create_graph in [(True, True), (False, True), (True, False)]:
        torch.manual_seed(10)
        values.append(power_series_logdet(
            linear_jvp(a), x, sample_dims=(1,), neumann_gradient=neumann, create_graph=create_graph,
        ))
    torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values[0].detach(), values[2], rtol=1e-12, atol=1e-12)
    assert values[2].requires_grad is False


def test_several_sample_dims_and_probes():
    a = contraction(0.2, seed=11)
    x = torch.randn(V, 4, 5, D, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    out = power_series_logdet(lambda v, _: linear_residual(v.reshape(V, 20, D), a).reshape(v.shape), x,
                              sample_dims=(1, 2), n_probes=3)
    assert out.shape == (4, 5)
    exact = torch.logdet(torch.eye(N, dtype=torch.float64) + a).item()
    assert abs(out.mean().item() - exact) < 0.5


def test_zero_terms_give_zero_and_bad_options_raise():
    a = contraction(0.3, seed=12)
    x = torch.randn(V, B, D, dtype=torch.float64, requires_grad=True)
    # n_exact = 0 and a stop at once (p = 1) truncate to N = 0 terms: the estimate is 0
    out = power_series_logdet(linear_jvp(a), x, sample_dims=(1,), n_exact_terms=0, stop_probability=1.0)
    assert out.shape == (B,) and (out == 0).all()
    for options in ({"n_exact_terms": -1}, {"stop_probability": 0.0}, {"stop_probability": 1.5}, {"n_probes": 0}):
        with pytest.raises(ValueError, match="n_exact_terms >= 0"):
            power_series_logdet(linear_jvp(a), x, sample_dims=(1,), **options)
    with pytest.raises(ValueError, match="keep the shape"):
        power_series_logdet(lambda v, _: linear_residual(v, a)[:, :2], x, sample_dims=(1,))
