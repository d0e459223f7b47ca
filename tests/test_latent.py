"""Tests of the node Gaussian latent against closed forms, scipy and brute force."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2, multivariate_normal, norm

from dgl_iflow.latents import LabelContextLatent
from dgl_iflow.models import NodeGaussianLatent
from dgl_iflow.models.latent import default_separation, spread_means


def _random_means(k: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def latent() -> NodeGaussianLatent:
    return NodeGaussianLatent(4, 3, sigma=0.7, means=_random_means(4, 3)).double()


def test_log_prob_matches_scipy(latent):
    gen = torch.Generator().manual_seed(1)
    v, n = 5, 6
    h = torch.randn(n, v, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (n, v), generator=gen)
    cov = 0.7**2 * np.eye(3)
    expected = np.zeros(n)
    for s in range(n):
        for node in range(v):
            mean = latent.means[y[s, node]].numpy()
            expected[s] += multivariate_normal(mean, cov).logpdf(h[s, node].numpy())
    out = latent.log_prob(h, y)
    assert out.shape == (n,)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_log_prob_broadcasts_node_labels_and_reduces_to_scalar(latent):
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)  # 4 samples on 5 nodes
    y = torch.randint(0, 4, (5,), generator=gen)
    full = latent.log_prob(h, y.expand(4, -1))
    assert full.shape == (4,)
    # Labels (V,) are a suffix of h's leading shape (4, V): shared by every sample.
    torch.testing.assert_close(latent.log_prob(h, y), full)
    single = latent.log_prob(h[0], y)
    assert single.shape == ()
    torch.testing.assert_close(single, full[0])
    # Several sample dimensions: labels (2, V) broadcast over the first.
    deep = torch.randn(3, 2, 5, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5), generator=gen)
    torch.testing.assert_close(latent.log_prob(deep, labels), latent.log_prob(deep, labels.expand(3, 2, 5)))
    # A prefix of the leading shape, the node-first convention of earlier releases, is refused.
    with pytest.raises(ValueError, match=r"labels of shape \(4,\) do not match h of shape \(4, 5, 3\).*suffix"):
        latent.log_prob(h, y[:4])


def test_node_log_prob_matches_scipy(latent):
    h = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = latent.node_log_prob(h)
    assert out.shape == (5, 2, 4)
    for k in range(4):
        ref = multivariate_normal(latent.means[k].numpy(), 0.49 * np.eye(3)).logpdf(
            h.reshape(-1, 3).numpy()
        )
        np.testing.assert_allclose(out[..., k].reshape(-1).numpy(), ref, rtol=1e-12)


def test_posterior_is_bayes_rule_with_priors():
    priors = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    means = _random_means(4, 2, seed=4)
    latent = NodeGaussianLatent(4, 2, sigma=0.8, means=means, priors=priors * 5).double()
    np.testing.assert_allclose(latent.log_priors.exp().numpy(), priors.numpy(), rtol=1e-6)
    # Compare with the float32-rounded values the module stores.
    priors, means = latent.log_priors.exp(), latent.means
    h = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = np.zeros((6, 3, 4))
    for idx in np.ndindex(6, 3):
        joint = [
            priors[k].item()
            * multivariate_normal(means[k].numpy(), 0.64 * np.eye(2)).pdf(h[idx].numpy())
            for k in range(4)
        ]
        expected[idx] = np.array(joint) / sum(joint)
    np.testing.assert_allclose(latent.posterior(h).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(latent.log_posterior(h).exp().numpy(), expected, rtol=1e-10)


def test_fit_priors_uses_add_one_smoothing(latent):
    y = torch.tensor([[0, 0, 0], [2, 2, 0]])
    latent.fit_priors(y)
    expected = np.array([4 + 1, 0 + 1, 2 + 1, 0 + 1]) / (6 + 4)
    np.testing.assert_allclose(latent.log_priors.exp().numpy(), expected, rtol=1e-12)


def test_default_priors_are_uniform(latent):
    np.testing.assert_allclose(latent.log_priors.exp().numpy(), np.full(4, 0.25))


def test_sample_moments_match():
    latent = NodeGaussianLatent(3, 2, sigma=1.5, means=_random_means(3, 2, seed=6)).double()
    y = torch.tensor([2, 0, 1, 2])
    n = 20000
    h = latent.sample(y, n, generator=torch.Generator().manual_seed(7))
    assert h.shape == (n, 4, 2)
    for node in range(4):
        x = h[:, node].numpy()
        se_mean = 1.5 / math.sqrt(n)
        np.testing.assert_array_less(
            np.abs(x.mean(0) - latent.means[y[node]].numpy()), 4 * se_mean
        )
        cov = np.cov(x.T)
        # Standard errors of a Gaussian sample variance and covariance.
        assert abs(cov[0, 0] - 2.25) < 4 * 2.25 * math.sqrt(2 / n)
        assert abs(cov[1, 1] - 2.25) < 4 * 2.25 * math.sqrt(2 / n)
        assert abs(cov[0, 1]) < 4 * 2.25 / math.sqrt(n)


def test_sample_shapes_and_seeding(latent):
    y = torch.tensor([[0, 1], [3, 2], [1, 1]])
    a = latent.sample(y, generator=torch.Generator().manual_seed(8))
    b = latent.sample(y, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 2, 3)  # labels (*, V) = (3, 2): 3 samples on 2 nodes
    torch.testing.assert_close(a, b)
    assert latent.sample(y[0], 5).shape == (5, 2, 3)
    with pytest.raises(ValueError, match=r"needs labels of shape \(V,\), got \(3, 2\)"):
        latent.sample(y, 5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        latent.sample(y[0], 0)


def test_seeded_samples_are_drawn_nodes_first_as_before(latent):
    """The noise is drawn in the node-first order of earlier releases, so seeded samples keep their values."""
    y = torch.tensor([0, 3, 1, 2, 2])
    h = latent.sample(y, 7, generator=torch.Generator().manual_seed(11))
    noise = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    torch.testing.assert_close(h, latent.means[y] + 0.7 * noise.permute(1, 0, 2), rtol=0, atol=0)
    labels = torch.randint(0, 4, (2, 6, 5), generator=torch.Generator().manual_seed(12))
    h = latent.sample(labels, generator=torch.Generator().manual_seed(13))
    noise = torch.randn(5, 2, 6, 3, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    torch.testing.assert_close(h, latent.means[labels] + 0.7 * noise.permute(1, 2, 0, 3), rtol=0, atol=0)


def test_confidence_radius_closed_form_in_two_dimensions():
    latent = NodeGaussianLatent(2, 2, sigma=1.3)
    for level in (0.5, 0.9, 0.99):
        assert latent.node_confidence_radius(level) == pytest.approx(
            1.3 * math.sqrt(-2 * math.log(1 - level)), rel=1e-12
        )


def test_node_confidence_radius_monte_carlo_coverage():
    latent = NodeGaussianLatent(3, 4, sigma=0.6, num_nodes=10).double()
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(9))
    h = latent.sample(y, 2000, generator=torch.Generator().manual_seed(10))
    inside = latent.node_contains(h, y, 0.9)
    assert inside.shape == (2000, 10) and inside.dtype == torch.bool
    assert torch.equal(latent.node_contains(h, y.expand(2000, -1), 0.9), inside)
    se = math.sqrt(0.9 * 0.1 / inside.numel())
    assert abs(inside.double().mean().item() - 0.9) < 3 * se
    centers, scales = latent.node_confidence_regions(y, 0.9)
    assert centers.shape == (10, 4) and scales.shape == (10, 4, 4)
    torch.testing.assert_close(centers, latent.means[y])
    radius = 0.6 * math.sqrt(chi2.ppf(0.9, 4))
    assert latent.node_confidence_radius(0.9) == pytest.approx(radius)
    torch.testing.assert_close(scales, radius * torch.eye(4, dtype=torch.float64).expand(10, -1, -1))


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_joint_region_holds_its_level_of_whole_samples(level):
    latent = NodeGaussianLatent(3, 4, sigma=0.6, num_nodes=10).double()
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(9))
    n = 20000
    h = latent.sample(y, n, generator=torch.Generator().manual_seed(10))
    inside = latent.contains(h, y, level)
    assert inside.shape == (n,)
    assert abs(inside.double().mean().item() - level) < 3 * math.sqrt(level * (1 - level) / n)
    assert latent.confidence_radius(level) == pytest.approx(math.sqrt(chi2.ppf(level, 40)))
    torch.testing.assert_close(latent.whitened_distance(h, y), (h - latent.means[y]).flatten(1).norm(dim=1) / 0.6)
    centers, scales = latent.confidence_region(y, level)
    assert centers.shape == (10, 4) and scales.shape == (40, 40)
    torch.testing.assert_close(scales, latent.confidence_radius(level) * 0.6 * torch.eye(40, dtype=torch.float64))


def test_default_separation_formula_and_growth():
    c = default_separation(5, 20, sigma=2.0)
    assert c == pytest.approx(2 * 2.0 * math.sqrt(2 * math.log(5 * 20 / 0.01)))
    # c^2 is affine in log(K V): c^2 / (8 sigma^2) = log(K V) - log(delta).
    for kv in (10, 1000, 10**6):
        assert default_separation(kv, 1) ** 2 / 8 == pytest.approx(math.log(kv) - math.log(0.01))
    assert default_separation(3, 1000) > default_separation(3, 10)


def test_default_separation_bounds_misplacement_probability():
    # Pairs placed exactly at the separation: the per-node, per-wrong-class
    # error is the Gaussian tail P(Z >= c / (2 sigma)), bounded by delta / (K V).
    for k, v in ((2, 1), (10, 100), (50, 10**4)):
        c = default_separation(k, v, sigma=1.0, delta=0.05)
        assert v * (k - 1) * norm.sf(c / 2) <= 0.05


@pytest.mark.parametrize(
    "k, d", [(1, 3), (2, 1), (5, 1), (4, 3), (4, 8), (7, 2), (12, 10), (30, 3), (40, 20)]
)
def test_automatic_means_are_separated_and_centred(k, d):
    latent = NodeGaussianLatent(k, d, sigma=0.5, num_nodes=50)
    c = default_separation(k, 50, sigma=0.5)
    assert latent.separation == pytest.approx(c)
    means = latent.means.double()
    assert means.shape == (k, d)
    if k > 1:
        assert torch.pdist(means).min().item() >= c * (1 - 1e-6)
    centroid = means.mean(0)
    torch.testing.assert_close(centroid, torch.zeros(d, dtype=torch.float64), atol=1e-5, rtol=0)


def test_simplex_means_are_equidistant():
    means = spread_means(5, 4, 3.0).double()
    torch.testing.assert_close(torch.pdist(means), torch.full((10,), 3.0, dtype=torch.float64))


def test_given_means_closer_than_min_separation_raise():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    with pytest.raises(ValueError, match=r"only 1 apart, below min_separation=2"):
        NodeGaussianLatent(3, 2, means=means, min_separation=2.0)
    NodeGaussianLatent(3, 2, means=means, min_separation=1.0)
    NodeGaussianLatent(3, 2, means=means)
    with pytest.raises(ValueError, match=r"means must have shape .* \(3, 2\), got \(2, 2\)"):
        NodeGaussianLatent(3, 2, means=means[:2])


def _trainable(means, c: float = 2.0, sigma: float = 1.0) -> NodeGaussianLatent:
    """Trainable latent whose float64 means are set after construction.

    Setting them afterwards allows means closer than ``c``, which the
    constructor rejects, and avoids rounding them to float32.
    """
    k, d = len(means), len(means[0])
    latent = NodeGaussianLatent(k, d, sigma=sigma, trainable_means=True, min_separation=c)
    latent = latent.double()
    with torch.no_grad():
        latent.means.copy_(torch.tensor(means, dtype=torch.float64))
    return latent


def _gap_after_step(latent: NodeGaussianLatent) -> tuple[float, float]:
    before = (latent.means[0] - latent.means[1]).norm().item()
    latent.zero_grad()
    penalty = latent.barrier_penalty()
    penalty.backward()
    grad = latent.means.grad
    assert torch.isfinite(penalty) and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    with torch.no_grad():
        stepped = latent.means - 1e-3 * grad
    return before, (stepped[0] - stepped[1]).norm().item()


def test_barrier_matches_log_barrier_when_feasible():
    latent = _trainable([[0.0, 0.0], [3.0, 4.0], [0.0, 9.0]], c=2.0, sigma=0.5)
    dists = [5.0, 9.0, math.hypot(3.0, 5.0)]
    expected = -sum(math.log((dd - 2.0) / 0.5) for dd in dists)
    assert latent.barrier_penalty().item() == pytest.approx(expected, rel=1e-12)
    before, after = _gap_after_step(_trainable([[0.0, 0.0], [3.0, 0.0]]))
    assert after > before


@pytest.mark.parametrize(
    "second", [[1.0, 0.5], [0.0, 1e-9], [0.0, 0.0]], ids=["closer-than-c", "almost-equal", "equal"]
)
def test_barrier_finite_and_pushes_apart_when_infeasible(second):
    latent = _trainable([[0.0, 0.0], second], c=2.0)
    before, after = _gap_after_step(latent)
    assert after > before + 1e-4


def test_barrier_is_continuous_at_the_switch():
    eps = 0.1
    values = []
    for gap in (eps - 1e-9, eps + 1e-9):
        latent = _trainable([[0.0], [2.0 + gap]], c=2.0)
        values.append(latent.barrier_penalty(eps).item())
    assert values[0] == pytest.approx(values[1], abs=1e-7)
    assert values[1] == pytest.approx(-math.log(eps), abs=1e-7)


def test_barrier_linear_extension_value_and_slope():
    eps, sigma, c = 0.2, 0.5, 2.0
    # Gap of -1 sigma: the means are 1.5 apart, 0.5 below c.
    latent = _trainable([[0.0, 0.0], [0.0, 1.5]], c=c, sigma=sigma)
    penalty = latent.barrier_penalty(eps)
    assert penalty.item() == pytest.approx(-math.log(eps) + (1.0 + eps) / eps, rel=1e-12)
    penalty.backward()
    # d B / d mu_1 = b'(u) * du/d||diff|| * unit = (-1/eps) * (1/sigma) * e_2.
    expected = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=torch.float64) / (eps * sigma)
    torch.testing.assert_close(latent.means.grad, expected)


def test_barrier_is_zero_for_fixed_means(latent):
    penalty = latent.barrier_penalty()
    assert penalty.item() == 0.0 and not penalty.requires_grad


def test_means_are_a_parameter_only_when_trainable(latent):
    assert "means" not in dict(latent.named_parameters())
    assert "means" in dict(_trainable([[0.0], [3.0]]).named_parameters())
    assert "log_priors" in dict(latent.named_buffers())


def test_label_errors_name_values_and_range(latent):
    h = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"labels \[-1, 4\] are outside the valid range \[0, 4\)"):
        latent.log_prob(h, torch.tensor([4, -1, 0]))
    with pytest.raises(ValueError, match=r"integer tensor, got dtype torch.float32"):
        latent.log_prob(h, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"outside the valid range \[0, 4\)"):
        latent.sample(torch.tensor([7]))
    with pytest.raises(ValueError, match=r"labels \[9\]"):
        latent.fit_priors(torch.tensor([0, 9]))


def test_shape_and_value_errors(latent):
    with pytest.raises(ValueError, match=r"shape \(\*, V, d\) with d=3, got \(4, 2\)"):
        latent.node_log_prob(torch.zeros(4, 2))
    with pytest.raises(
        ValueError, match=r"labels of shape \(5,\) do not match h of shape \(4, 2, 3\)"
    ):
        latent.log_prob(torch.zeros(4, 2, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels of shape \(4, 3\) do not match"):
        latent.node_contains(torch.zeros(4, 2, 3), torch.zeros(4, 3, dtype=torch.long), 0.9)
    bad = torch.zeros(4, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"h of shape \(4, 3\) contains NaN or inf"):
        latent.posterior(bad)
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\), got 1.5"):
        latent.node_confidence_radius(1.5)


def test_extra_repr_lists_configuration(latent):
    text = repr(latent)
    for part in ("num_classes=4", "dim=3", "sigma=0.7", "trainable_means=False", "separation="):
        assert part in text


def _context_latent(seed: int = 0) -> LabelContextLatent:
    latent = LabelContextLatent(3, 2, sigma=0.8, means=_random_means(3, 2), num_nodes=4).double()
    with torch.no_grad():
        latent.context.normal_(generator=torch.Generator().manual_seed(seed))
    return latent


def test_label_context_shifts_every_node_by_the_labels_of_all():
    latent = _context_latent()
    assert latent.context.shape == (4, 2, 4, 2)  # (source node, class >= 1, target node, d)
    y = torch.tensor([[0, 2, 1, 0], [1, 1, 0, 2]])
    expected = latent.means[y].clone()
    for s in range(2):
        for u in range(4):
            if y[s, u] > 0:
                expected[s] += latent.context[u, y[s, u] - 1]
    torch.testing.assert_close(latent.centers(y), expected, rtol=0, atol=1e-12)
    h = torch.randn(2, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for s in range(2):
        reference = multivariate_normal(expected[s].reshape(-1).detach().numpy(), 0.64 * np.eye(8)).logpdf(h[s].reshape(-1))
        assert float(latent.log_prob(h[s], y[s])) == pytest.approx(reference, rel=1e-10)
    # Samples are the shifted centers plus the same noise as without context.
    plain = NodeGaussianLatent(3, 2, sigma=0.8, means=_random_means(3, 2), num_nodes=4).double()
    draw = latent.sample(y, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(draw - expected, plain.sample(y, generator=torch.Generator().manual_seed(5)) - plain.means[y])
    with pytest.raises(ValueError, match="labels of all 4 nodes"):
        latent.centers(torch.tensor([0, 1]))


def test_label_vector_posterior_is_bayes_over_the_training_vectors():
    latent = _context_latent(seed=2)
    gen = torch.Generator().manual_seed(3)
    y_train = torch.tensor([[0, 0, 0, 0]] * 5 + [[1, 0, 2, 0]] * 2 + [[0, 2, 2, 1]])
    with pytest.raises(RuntimeError, match="fit_label_vectors"):
        latent.posterior(torch.zeros(4, 2, dtype=torch.float64))
    vectors = latent.fit_label_vectors(y_train)
    assert len(vectors) == 3
    h = torch.randn(6, 4, 2, dtype=torch.float64, generator=gen)
    proba = latent.posterior(h)
    assert proba.shape == (6, 4, 3)
    counts = {tuple(v.tolist()): int((y_train == v).all(1).sum()) for v in vectors}
    for s in range(6):
        joint = {key: math.log(n / 8) + float(latent.log_prob(h[s], torch.tensor(key))) for key, n in counts.items()}
        top = max(joint.values())
        total = sum(math.exp(value - top) for value in joint.values())
        for v in range(4):
            for k in range(3):
                expected = sum(math.exp(value - top) for key, value in joint.items() if key[v] == k) / total
                assert float(proba[s, v, k]) == pytest.approx(expected, abs=1e-12)


def test_label_vector_posterior_over_all_vectors_is_the_node_posterior_without_context():
    """Every label vector once and no context: the joint posterior factorizes into the node-wise one."""
    latent = NodeGaussianLatent(2, 2, sigma=0.6, means=_random_means(2, 2), num_nodes=3).double()
    latent.fit_label_vectors(torch.cartesian_prod(*[torch.arange(2)] * 3))
    h = torch.randn(5, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(latent.label_vector_posterior(h), latent.posterior(h), rtol=0, atol=1e-12)
