"""Tests of dgl_iflow.baselines against closed forms and brute-force references."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from dgl_iflow import metrics
from dgl_iflow.baselines import LabelGaussian, NodeGaussian, NodeLogistic, ResampledRows


def gaussian_rows(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """``n`` draws of N(mean, cov) in float64, shaped (n, V, d) like ``mean``."""
    gen = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov)
    noise = torch.randn(n, mean.numel(), generator=gen, dtype=torch.float64)
    return (mean.flatten() + noise @ chol.T).reshape(n, *mean.shape)


def random_cov(p: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(p, p, generator=gen, dtype=torch.float64)
    return a @ a.T / p + 0.3 * torch.eye(p, dtype=torch.float64)


@pytest.fixture(scope="module")
def two_label_data() -> dict:
    """V = 3, d = 2 rows from two known correlated Gaussians, one per label vector."""
    means = {(0, 1, 0): torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 0.0]], dtype=torch.float64),
             (1, 1, 0): torch.tensor([[-2.0, 0.0], [1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)}
    covs = {key: random_cov(6, seed) for seed, key in enumerate(means)}
    counts = {(0, 1, 0): 6000, (1, 1, 0): 4000}
    xs, ys = [], []
    for seed, key in enumerate(means):
        xs.append(gaussian_rows(counts[key], means[key], covs[key], seed=10 + seed))
        ys.append(torch.tensor(key).expand(counts[key], 3))
    order = torch.randperm(10000, generator=torch.Generator().manual_seed(3))
    return dict(x=torch.cat(xs)[order], y=torch.cat(ys)[order], means=means, covs=covs)


# ----------------------------------------------------------------------------- resampling
def test_resampled_rows_are_training_rows_of_that_label_vector():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, 2, generator=gen)
    y = torch.randint(0, 2, (40, 4), generator=gen)
    y[:5] = torch.tensor([1, 0, 1, 1])
    target = torch.tensor([1, 0, 1, 1])
    members = x[(y == target).all(dim=1)]
    out = ResampledRows(x, y, seed=1).generate(target, 300)
    assert out.shape == (300, 4, 2) and out.dtype == x.dtype
    # Every draw is one of the member rows, and with 300 draws every member shows up.
    match = (out[:, None] == members[None]).flatten(2).all(dim=2)
    assert (match.sum(dim=1) >= 1).all()
    assert match.any(dim=0).all()
    again = ResampledRows(x, y, seed=1).generate(target, 300)
    assert torch.equal(out, again), "the seed fixes the draws"


def test_resampled_rows_unknown_label_vector_and_bad_requests():
    x, y = torch.zeros(3, 2, 1), torch.tensor([[0, 0], [0, 1], [0, 1]])
    sampler = ResampledRows(x, y)
    with pytest.raises(KeyError, match=r"\[1,1\] does not occur"):
        sampler.generate(torch.tensor([1, 1]), 2)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        sampler.generate(torch.tensor([0, 1, 0]), 2)
    with pytest.raises(ValueError, match="n must be >= 0"):
        sampler.generate(torch.tensor([0, 1]), -1)
    with pytest.raises(ValueError, match=r"x \(N, V, d\) and y \(N, V\)"):
        ResampledRows(torch.zeros(3, 2), y)
    with pytest.raises(ValueError, match="integers"):
        ResampledRows(x, y.float())


# ----------------------------------------------------------------------------- label Gaussian
def test_label_gaussian_fits_the_closed_form_moments(two_label_data):
    x, y = two_label_data["x"], two_label_data["y"]
    model = LabelGaussian(x, y, ridge=1e-3)
    for key, true_mean in two_label_data["means"].items():
        labels = torch.tensor(key)
        rows = x[(y == labels).all(dim=1)].reshape(-1, 6)
        # Exactly the sample moments plus the ridge ...
        assert torch.allclose(model.means[key], rows.mean(dim=0), atol=1e-12)
        expected = torch.cov(rows.T) + 1e-3 * torch.eye(6, dtype=torch.float64)
        assert torch.allclose(model.covariance(labels), expected, atol=1e-10)
        # ... which are close to the generating ones (4000+ rows: errors of a few 0.01).
        assert torch.allclose(model.means[key], true_mean.flatten(), atol=0.06)
        assert torch.allclose(model.covariance(labels), two_label_data["covs"][key], atol=0.08)


def test_label_gaussian_samples_and_log_prob(two_label_data):
    x, y = two_label_data["x"], two_label_data["y"]
    model = LabelGaussian(x, y, seed=5)
    key = (1, 1, 0)
    draws = model.generate(torch.tensor(key), 20000).reshape(20000, 6)
    assert torch.allclose(draws.mean(dim=0), model.means[key], atol=0.05)
    assert torch.allclose(torch.cov(draws.T), model.covariance(torch.tensor(key)), atol=0.08)
    # Brute-force density: torch's own multivariate normal with the fitted parameters.
    log_p = model.log_prob(x[:50], y[:50])
    for i in range(50):
        k = tuple(y[i].tolist())
        reference = MultivariateNormal(model.means[k], model.covariance(torch.tensor(k)))
        assert torch.isclose(log_p[i], reference.log_prob(x[i].flatten()), atol=1e-9)
    unseen = torch.tensor([[1, 1, 1]])
    assert torch.isnan(model.log_prob(x[:1], unseen)).all()


def test_label_gaussian_shrinkage_few_rows_and_errors():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 2, generator=gen, dtype=torch.float64)
    y = torch.zeros(5, 3, dtype=torch.int64)
    y[4] = 1  # label vector [1, 1, 1] has one row
    # Five rows in six dimensions: the ridge alone makes the covariance invertible.
    few = LabelGaussian(x, y, ridge=0.1, min_rows=2)
    cov = torch.cov(x[:4].reshape(4, 6).T)
    assert torch.allclose(few.covariance(torch.zeros(3)), cov + 0.1 * torch.eye(6))
    assert torch.isfinite(few.log_prob(x[:4], y[:4])).all()
    diagonal = LabelGaussian(x, y, shrinkage=1.0, ridge=0.1)
    assert torch.allclose(diagonal.covariance(torch.zeros(3)),
                          torch.diag(cov.diagonal()) + 0.1 * torch.eye(6))
    with pytest.raises(KeyError, match=r"\[1,0,1\] has 0 training rows"):
        few.generate(torch.tensor([1, 0, 1]), 2)
    with pytest.raises(KeyError, match="has 1 training rows, fewer than min_rows = 2"):
        few.generate(y[4], 2)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        LabelGaussian(x, y, ridge=0.0)
    with pytest.raises(ValueError, match="shrinkage"):
        LabelGaussian(x, y, shrinkage=1.5)
    with pytest.raises(ValueError, match="x rows must have shape"):
        few.log_prob(x[:, :2], y[:, :2])


# ----------------------------------------------------------------------------- node Gaussian
def test_node_gaussian_moments_independence_and_log_prob(two_label_data):
    x, y = two_label_data["x"], two_label_data["y"]
    model = NodeGaussian(x, y, ridge=1e-3, seed=2)
    for v in range(3):
        for k in (0, 1):
            rows = x[y[:, v] == k, v]
            if not len(rows):
                continue
            assert torch.allclose(model.means[v, k], rows.mean(dim=0), atol=1e-12)
            chol = model.chols[v, k]
            assert torch.allclose(chol @ chol.T, torch.cov(rows.T) + 1e-3 * torch.eye(2),
                                  atol=1e-10)
    labels = torch.tensor([1, 1, 0])
    draws = model.generate(labels, 20000)
    assert draws.shape == (20000, 3, 2)
    flat_cov = torch.cov(draws.reshape(20000, 6).T)
    # The training rows are correlated across nodes; the generated nodes are not.
    assert flat_cov[:2, 2:].abs().max() < 0.04
    assert torch.cov(x.reshape(-1, 6).T)[:2, 2:].abs().max() > 0.2
    assert torch.allclose(draws[:, 0].mean(dim=0), model.means[0, 1], atol=0.05)
    log_p = model.log_prob(x[:20], y[:20])
    for i in range(20):
        reference = sum(
            MultivariateNormal(model.means[v, y[i, v]],
                               model.chols[v, y[i, v]] @ model.chols[v, y[i, v]].T)
            .log_prob(x[i, v]) for v in range(3))
        assert torch.isclose(log_p[i], reference, atol=1e-9)


def test_node_gaussian_missing_node_label_pair(two_label_data):
    model = NodeGaussian(two_label_data["x"], two_label_data["y"])
    # Node 2 is always 0 in the training rows.
    with pytest.raises(KeyError, match="node 2 never has label 1"):
        model.generate(torch.tensor([0, 1, 1]), 3)
    with pytest.raises(KeyError, match="node 1 never has label 3"):
        model.generate(torch.tensor([0, 3, 0]), 3)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        model.generate(torch.tensor([0, -1, 0]), 3)


def test_baselines_run_through_the_paper_protocol(two_label_data):
    x, y = two_label_data["x"], two_label_data["y"]
    test_x, test_y = x[:600], y[:600]
    scores = {name: metrics.paper_protocol(test_x, test_y, model.generate, top=2)
              for name, model in [("resample", ResampledRows(x[600:], y[600:])),
                                  ("label", LabelGaussian(x[600:], y[600:])),
                                  ("node", NodeGaussian(x[600:], y[600:]))]}
    # The data are one Gaussian per label vector: the first two are near 0, the node-wise
    # model misses the cross-node correlations.
    assert abs(scores["label"]["mmd"]) < 0.01 and abs(scores["resample"]["mmd"]) < 0.01
    assert scores["node"]["energy"] > 5 * max(scores["label"]["energy"], 0.01)


# ----------------------------------------------------------------------------- logistic
def test_node_logistic_recovers_a_known_logistic_model():
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x = torch.randn(n, 2, 2, generator=gen, dtype=torch.float64)
    w = torch.tensor([[1.5, -2.0], [0.0, 0.8]], dtype=torch.float64)
    b = torch.tensor([0.5, -1.0], dtype=torch.float64)
    p1 = torch.sigmoid((x * w).sum(-1) + b)
    y = (torch.rand(n, 2, generator=gen, dtype=torch.float64) < p1).long()
    model = NodeLogistic(x, y, features="own", l2=0.0)
    # Two-class softmax identifies only the difference of the class weights.
    assert torch.allclose(model.weight[:, :, 1] - model.weight[:, :, 0], w, atol=0.1)
    assert torch.allclose(model.bias[:, 1] - model.bias[:, 0], b, atol=0.1)
    proba = model.predict_proba(x)
    assert proba.shape == (n, 2, 2)
    assert torch.allclose(proba[:, :, 1], p1, atol=0.03)
    assert torch.allclose(proba.sum(-1), torch.ones(n, 2, dtype=torch.float64))


def test_node_logistic_optimum_and_separable_data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 3, 2, generator=gen, dtype=torch.float64)
    score = x[:, :, 0] + 0.5 * x[:, :, 1]
    # Push every point at least 0.5 away from the boundary: separable with a margin per node.
    x[:, :, 0] += 0.5 * score.sign()
    y = (score > 0).long()
    model = NodeLogistic(x, y, features="own")
    assert metrics.node_accuracy(model.predict_proba(x), y) == 1.0
    assert torch.isfinite(model.weight).all()
    # The penalized objective is stationary at the returned weights.
    weight = model.weight.clone().requires_grad_(True)
    bias = model.bias.clone().requires_grad_(True)
    model.weight, model.bias = weight, bias
    model.objective(x, y).backward()
    assert weight.grad.abs().max() < 1e-6 and bias.grad.abs().max() < 1e-6


def test_node_logistic_all_features_sees_other_nodes():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2000, 2, 1, generator=gen)
    # Each node's label is the sign of the other node's feature.
    y = torch.stack([(x[:, 1, 0] > 0), (x[:, 0, 0] > 0)], dim=1).long()
    own = NodeLogistic(x, y, features="own")
    full = NodeLogistic(x, y, features="all")
    assert metrics.node_accuracy(own.predict_proba(x), y) < 0.6
    assert metrics.node_accuracy(full.predict_proba(x), y) > 0.98
    assert full.weight.shape == (2, 2, 2) and own.weight.shape == (2, 1, 2)


def test_node_logistic_errors():
    x, y = torch.randn(10, 2, 2), torch.randint(0, 2, (10, 2))
    with pytest.raises(ValueError, match="'own' or 'all'"):
        NodeLogistic(x, y, features="graph")
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        NodeLogistic(x, y, l2=-1.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        NodeLogistic(x, y + 1, num_classes=2)
    model = NodeLogistic(x, y)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2, 2\)"):
        model.predict_proba(torch.randn(10, 3, 2))
