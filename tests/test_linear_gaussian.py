"""The law for real-valued targets, H_v | Y_v = y ~ N(A y + b, sigma^2 I), against closed forms."""
import math

import pytest
import torch

from dgl_iflow.latents import LatentLaw, LinearGaussianLatent

V, D = 3, 2


def _law(label_dim: int | None = 2, dim: int = D) -> LinearGaussianLatent:
    generator = torch.Generator().manual_seed(0)
    q = 1 if label_dim is None else label_dim
    weight = torch.randn(dim, q, generator=generator)
    law = LinearGaussianLatent(dim, V, label_dim=label_dim, sigma=0.6, weight=weight, trainable=True).double()
    with torch.no_grad():
        law.bias.normal_(generator=generator)
    # A prior fitted to correlated training targets, one law per node.
    mixing = torch.randn(V, q, q, generator=generator, dtype=torch.float64)
    targets = (torch.randn(500, V, 1, q, generator=generator, dtype=torch.float64) @ mixing).squeeze(-2) + 2.0
    law.fit_before_training(targets.squeeze(-1) if label_dim is None else targets)
    return law


def _dense(law: LinearGaussianLatent, y: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """The law of the flattened latent ``(V d,)`` given one target ``(V, q)``, written out."""
    mean = torch.stack([law.weight @ y[v] + law.bias for v in range(V)]).flatten()
    return torch.distributions.MultivariateNormal(mean, law.sigma**2 * torch.eye(V * law.dim, dtype=torch.float64))


def test_is_a_latent_law_without_classes():
    law = _law()
    assert isinstance(law, LatentLaw) and law.num_classes is None and not law.fits_after_training


@pytest.mark.parametrize("label_dim", [None, 1, 2, 3])
def test_log_prob_is_the_dense_gaussian_for_any_target(label_dim):
    law = _law(label_dim)
    q = 1 if label_dim is None else label_dim
    y = 10.0 * torch.randn(4, V, q, dtype=torch.float64)  # far outside the training targets too
    h = torch.randn(4, V, D, dtype=torch.float64)
    labels = y.squeeze(-1) if label_dim is None else y
    expected = torch.stack([_dense(law, y[i]).log_prob(h[i].flatten()) for i in range(4)])
    torch.testing.assert_close(law.log_prob(h, labels), expected.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(law.log_prob(h, labels[0]), torch.stack(
        [_dense(law, y[0]).log_prob(h[i].flatten()) for i in range(4)]).detach(), rtol=0, atol=1e-10)


def test_samples_have_the_law_s_moments_outside_the_training_range():
    law = _law(2)
    for y in (torch.zeros(V, 2), torch.full((V, 2), -25.0), torch.randn(V, 2)):
        y = y.double()
        draws = law.sample(y, 40000, generator=torch.Generator().manual_seed(1)).detach()
        assert draws.shape == (40000, V, D) and draws.dtype == torch.float64
        torch.testing.assert_close(draws.mean(0), law.centers(y).detach(), rtol=0, atol=0.02)
        torch.testing.assert_close(draws.flatten(1).T.cov(), 0.36 * torch.eye(V * D, dtype=torch.float64),
                                   rtol=0, atol=0.02)


def test_prior_is_fitted_per_node():
    law = LinearGaussianLatent(D, V, label_dim=2).double()
    y = torch.randn(200, V, 2, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64) + 5.0
    law.fit_before_training(y)
    torch.testing.assert_close(law.prior_mean, y.mean(0))
    for v in range(V):
        torch.testing.assert_close(law.prior_cov[v], torch.cov(y[:, v].T), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label_dim,dim", [(None, 2), (2, 2), (3, 2), (1, 4)])
def test_posterior_is_the_conditional_of_the_joint_gaussian(label_dim, dim):
    """Schur complement of the joint law of (Y_v, H_v) against the law's precision form."""
    law = _law(label_dim, dim)
    h = torch.randn(5, V, dim, dtype=torch.float64)
    mean, cov = law.posterior_moments(h)
    a, b = law.weight.detach(), law.bias.detach()
    for v in range(V):
        m, s = law.prior_mean[v], law.prior_cov[v]
        gain = s @ a.T @ torch.linalg.inv(a @ s @ a.T + law.sigma**2 * torch.eye(dim, dtype=torch.float64))
        expected_mean = m + (h[:, v] - a @ m - b) @ gain.T
        torch.testing.assert_close(mean[:, v].detach(), expected_mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(cov[:, v].detach(), (s - gain @ a @ s).expand(5, -1, -1), rtol=0, atol=1e-10)
    predicted = law.posterior_mean(h)
    assert predicted.shape == ((5, V) if label_dim is None else (5, V, label_dim))
    distribution = law.posterior(h)
    assert distribution.batch_shape == (5, V)
    torch.testing.assert_close(distribution.mean, mean)


def test_posterior_is_bayes_rule_by_quadrature():
    """One target per node: the posterior density on a grid, normalized numerically."""
    law = _law(None)
    h = torch.randn(1, V, D, dtype=torch.float64)
    grid = torch.linspace(-15, 15, 20001, dtype=torch.float64)
    mean, cov = law.posterior_moments(h)
    for v in range(V):
        prior = torch.distributions.Normal(law.prior_mean[v, 0], law.prior_cov[v, 0, 0].sqrt()).log_prob(grid)
        centers = grid[:, None] * law.weight[:, 0].detach() + law.bias.detach()
        likelihood = torch.distributions.Normal(centers, law.sigma).log_prob(h[0, v]).sum(-1)
        weights = torch.softmax(prior + likelihood, 0)
        numeric_mean = (weights * grid).sum()
        numeric_var = (weights * (grid - numeric_mean) ** 2).sum()
        torch.testing.assert_close(mean[0, v, 0].detach(), numeric_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(cov[0, v, 0, 0].detach(), numeric_var, rtol=0, atol=1e-6)


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_intervals_cover_targets_drawn_from_the_model(level):
    law = _law(2)
    generator = torch.Generator().manual_seed(3)
    n = 20000
    chol = torch.linalg.cholesky(law.prior_cov)
    y = law.prior_mean + (chol @ torch.randn(n, V, 2, 1, generator=generator, dtype=torch.float64)).squeeze(-1)
    h = law.sample(y, generator=generator).detach()
    lower, upper = law.posterior_interval(h, level)
    covered = ((lower <= y) & (y <= upper)).double().mean().item()
    assert abs(covered - level) < 4 * math.sqrt(level * (1 - level) / (n * V * 2)) + 0.005


def test_save_load_float64_and_gradients():
    law = _law(2)
    fresh = LinearGaussianLatent(D, V, label_dim=2, sigma=0.6, trainable=True).double()  # as built
    fresh.load_state_dict(law.state_dict())
    h = torch.randn(4, V, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, V, 2, dtype=torch.float64)
    torch.testing.assert_close(fresh.log_prob(h, y), law.log_prob(h, y), rtol=0, atol=0)
    torch.testing.assert_close(fresh.posterior_mean(h), law.posterior_mean(h), rtol=0, atol=0)
    assert law.log_prob(h, y).dtype == law.sample(y).dtype == torch.float64
    (law.log_prob(h, y).sum() + law.posterior_mean(h).sum()).backward()
    assert h.grad is not None and h.grad.abs().max() > 0
    assert law.weight.grad.abs().max() > 0 and law.bias.grad.abs().max() > 0


def test_refuses_bad_shapes():
    law = _law(2)
    with pytest.raises(ValueError, match="targets must have shape"):
        law.log_prob(torch.zeros(1, V, D, dtype=torch.float64), torch.zeros(1, V, dtype=torch.float64))
    with pytest.raises(ValueError, match="h must have shape"):
        law.posterior(torch.zeros(1, V + 1, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight must have shape"):
        LinearGaussianLatent(D, V, label_dim=2, weight=torch.zeros(D, 3))
