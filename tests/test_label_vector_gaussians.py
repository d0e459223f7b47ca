"""Joint latent Gaussians per training label vector, against closed forms, scipy and Monte Carlo."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chi2, multivariate_normal

from dgl_iflow import IGNN, TrainConfig, fit
from dgl_iflow.latents import LabelContextLatent
from dgl_iflow.models import NodeGaussianLatent
from dgl_iflow.models.latent import MAX_JOINT_DIM, PSEUDO_COUNTS, gaussian_log_prob
from graphs import path_graph, toy_data

NODES, DIM, SIGMA = 3, 2, 0.7


def _latent(label_context: bool = False) -> NodeGaussianLatent:
    means = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    law = LabelContextLatent if label_context else NodeGaussianLatent
    latent = law(2, DIM, sigma=SIGMA, means=means, num_nodes=NODES)
    if label_context:
        with torch.no_grad():
            latent.context.normal_(generator=torch.Generator().manual_seed(5))
    return latent.double()


def _rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of two label vectors seen 40 and 3 times and one seen once, each with its own
    correlated law: none of them the node law."""
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.tensor([[0, 0, 0], [0, 1, 1], [1, 1, 0]])
    y = vectors[torch.tensor([0] * 40 + [1] * 3 + [2])]
    mix = torch.randn(NODES * DIM, NODES * DIM, generator=gen, dtype=torch.float64) * 0.3
    h = (torch.randn(len(y), NODES * DIM, generator=gen, dtype=torch.float64) @ mix.T).reshape(-1, NODES, DIM)
    return h + 2.0 * y.unsqueeze(-1).double(), y


def _direct(h: torch.Tensor, y: torch.Tensor, latent: NodeGaussianLatent, s: float, key) -> tuple:
    """The docstring's formula for one label vector, written out."""
    rows = h[(y == torch.tensor(key)).all(1)].flatten(1)
    prior = latent.node_law_centers(torch.tensor(key)).flatten()
    mean = (rows.sum(0) + s * prior) / (len(rows) + s)
    scatter = sum(torch.outer(r - mean, r - mean) for r in rows)
    return mean, (scatter + s * SIGMA**2 * torch.eye(NODES * DIM, dtype=torch.float64)) / (len(rows) + s)


def test_gaussian_log_prob_of_columns_broadcasts_over_batches_against_scipy():
    gen = torch.Generator().manual_seed(3)
    factors = torch.randn(4, 5, 5, generator=gen, dtype=torch.float64)
    chols = torch.linalg.cholesky(factors @ factors.transpose(-2, -1) + 0.5 * torch.eye(5, dtype=torch.float64))
    means = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    points = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    got = gaussian_log_prob(points.T, means, chols)  # one set of columns against 4 Gaussians
    assert got.shape == (4, 7)
    for m in range(4):
        cov = (chols[m] @ chols[m].T).numpy()
        want = multivariate_normal(means[m].numpy(), cov).logpdf(points.numpy())
        np.testing.assert_allclose(got[m].numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("label_context", [False, True])
def test_fitted_means_and_covariances_follow_the_formula(label_context):
    latent = _latent(label_context)
    h, y = _rows()
    assert latent.fit_label_vector_gaussians(h, y, pseudo_count=2.5) == 2.5
    assert latent.label_vectors.tolist() == [[0, 0, 0], [0, 1, 1], [1, 1, 0]]
    for m, key in enumerate(latent.label_vectors.tolist()):
        mean, cov = _direct(h, y, latent, 2.5, key)
        torch.testing.assert_close(latent.joint_means[m], mean)
        torch.testing.assert_close(latent.joint_chols[m] @ latent.joint_chols[m].T, cov)
        torch.testing.assert_close(latent.centers(torch.tensor(key)), mean.reshape(NODES, DIM))


def test_log_prob_is_the_joint_gaussian_and_the_node_law_elsewhere():
    latent = _latent()
    node_law = _latent()
    h, y = _rows()
    latent.fit_label_vector_gaussians(h, y, pseudo_count=1.0)
    probe = torch.randn(4, NODES, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]])  # [1, 0, 1] was never seen
    out = latent.log_prob(probe, labels)
    for i in (0, 1, 3):
        mean, cov = _direct(h, y, latent, 1.0, labels[i].tolist())
        expected = multivariate_normal(mean.numpy(), cov.numpy()).logpdf(probe[i].flatten().numpy())
        assert out[i].item() == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(out[2], node_law.log_prob(probe[2], labels[2]))
    # One label vector for every sample, as (V,) labels.
    torch.testing.assert_close(latent.log_prob(probe, labels[1]), latent.log_prob(probe, labels[1].expand(4, -1)))


def test_samples_have_the_fitted_law_and_the_node_law_keeps_its_draws():
    latent = _latent()
    h, y = _rows()
    latent.fit_label_vector_gaussians(h, y, pseudo_count=1.0)
    key = torch.tensor([0, 1, 1])
    drawn = latent.sample(key, 40000, generator=torch.Generator().manual_seed(2)).flatten(1)
    mean, cov = _direct(h, y, latent, 1.0, key.tolist())
    # Monte Carlo: 40,000 draws, entries of order 0.1-1, standard errors below 0.01.
    torch.testing.assert_close(drawn.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(drawn.T), cov, atol=0.03, rtol=0)
    unseen = torch.tensor([1, 0, 1])
    with pytest.warns(UserWarning, match="never seen in training .* per-node law"):
        fallback = latent.sample(unseen, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fallback, _latent().sample(unseen, 5, generator=torch.Generator().manual_seed(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a label vector with its own Gaussian, and a latent without any: silent
        latent.sample(key, 5)
        _latent().sample(unseen, 5)


def test_posterior_is_bayes_over_the_label_vectors_under_their_gaussians():
    latent = _latent()
    h, y = _rows()
    latent.fit_label_vector_gaussians(h, y, pseudo_count=1.0)
    probe = torch.randn(6, NODES, DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 1.0
    weights = torch.tensor([40.0, 3.0, 1.0]) / 44.0
    vectors = latent.label_vectors
    for i in range(len(probe)):
        joint = np.array([w * multivariate_normal(*[t.numpy() for t in _direct(h, y, latent, 1.0, v.tolist())])
                          .pdf(probe[i].flatten().numpy()) for w, v in zip(weights.tolist(), vectors)])
        joint /= joint.sum()
        expected = np.zeros((NODES, 2))
        for m, vector in enumerate(vectors.tolist()):
            expected[np.arange(NODES), vector] += joint[m]
        np.testing.assert_allclose(latent.posterior(probe[i]).numpy(), expected, atol=1e-10)


def test_cross_validation_picks_the_most_shrinkage_within_one_standard_error_of_the_best():
    # Rows a little tighter than the node law: several pseudo-counts fit about as well.
    latent = _latent()
    y = torch.tensor([[0, 0, 0]] * 10 + [[0, 1, 1]] * 10)
    h = latent.node_law_centers(y) + 0.7 * SIGMA * torch.randn(20, NODES, DIM, dtype=torch.float64,
                                                               generator=torch.Generator().manual_seed(11))
    chosen = latent.fit_label_vector_gaussians(h, y, generator=torch.Generator().manual_seed(7))
    fold = torch.randint(0, 5, (len(h),), generator=torch.Generator().manual_seed(7))

    def held_out(s: float) -> np.ndarray:
        out = np.zeros(len(h))
        for f in range(5):
            train = fold != f
            for i in torch.nonzero(~train).flatten().tolist():
                mean, cov = _direct(h[train], y[train], latent, s, y[i].tolist())
                out[i] = multivariate_normal(mean.numpy(), cov.numpy()).logpdf(h[i].flatten().numpy())
        return out

    scores = {s: held_out(s) for s in PSEUDO_COUNTS}
    best = max(scores, key=lambda s: scores[s].sum())
    within = [s for s in PSEUDO_COUNTS
              if (scores[s] - scores[best]).sum() >= -(scores[s] - scores[best]).std(ddof=1) * math.sqrt(len(h))]
    assert chosen == max(within) and chosen > best
    # Rows drawn from the node law itself: shrinking all the way towards it is best.
    y_law = _rows()[1][:40].repeat(5, 1)
    h_law = _latent().sample(y_law, generator=torch.Generator().manual_seed(8))
    assert _latent().fit_label_vector_gaussians(h_law, y_law) == max(PSEUDO_COUNTS)
    # Rows far tighter than the node law: little shrinkage.
    h_tight = _latent().node_law_centers(y_law) + 0.05 * torch.randn(h_law.shape, dtype=torch.float64,
                                                                     generator=torch.Generator().manual_seed(9))
    assert _latent().fit_label_vector_gaussians(h_tight, y_law) <= 3.0


def test_confidence_regions_are_the_node_marginals_ellipsoids():
    latent = _latent()
    h, y = _rows()
    latent.fit_label_vector_gaussians(h, y, pseudo_count=1.0)
    labels = torch.tensor([[0, 1, 1], [1, 0, 1]])
    centers, scales = latent.node_confidence_regions(labels, 0.9)
    assert centers.shape == (2, NODES, DIM) and scales.shape == (2, NODES, DIM, DIM)
    _, cov = _direct(h, y, latent, 1.0, [0, 1, 1])
    for v in range(NODES):
        block = cov[DIM * v:DIM * (v + 1), DIM * v:DIM * (v + 1)]
        torch.testing.assert_close(scales[0, v] @ scales[0, v].T, chi2.ppf(0.9, DIM) * block)
    radius = latent.node_confidence_radius(0.9)
    torch.testing.assert_close(scales[1], radius * torch.eye(DIM, dtype=torch.float64).expand(NODES, -1, -1))
    drawn = latent.sample(labels[0], 20000, generator=torch.Generator().manual_seed(9))
    inside = latent.node_contains(drawn, labels[0], 0.9)
    assert inside.shape == (20000, NODES)
    assert abs(inside.double().mean().item() - 0.9) < 3 * math.sqrt(0.09 / inside.numel())
    # The joint Gaussian's whole-sample set holds 0.9 of its draws, the per-node sets together fewer.
    whole = latent.contains(drawn, labels[0], 0.9)
    assert whole.shape == (20000,)
    assert abs(whole.double().mean().item() - 0.9) < 3 * math.sqrt(0.09 / whole.numel())
    centers, scales = latent.confidence_region(labels[0], 0.9)
    _, cov = _direct(h, y, latent, 1.0, [0, 1, 1])
    torch.testing.assert_close(scales @ scales.T, chi2.ppf(0.9, NODES * DIM) * cov)


def test_state_travels_with_the_module_and_fit_label_vectors_drops_it():
    latent = _latent()
    h, y = _rows()
    latent.fit_label_vector_gaussians(h, y, pseudo_count=3.0)
    loaded = _latent()
    loaded.load_state_dict(latent.state_dict())
    assert loaded.pseudo_count == 3.0
    probe = torch.randn(3, NODES, DIM, dtype=torch.float64)
    torch.testing.assert_close(loaded.log_prob(probe, y[:3]), latent.log_prob(probe, y[:3]))
    single = loaded.float()
    assert single.joint_chols.dtype == torch.float32 and single.label_log_weights.dtype == torch.float32
    torch.testing.assert_close(single.log_prob(probe.float(), y[:3]), latent.log_prob(probe, y[:3]).float())
    latent.fit_label_vectors(y)
    assert latent.pseudo_count is None and latent.joint_means is None
    torch.testing.assert_close(latent.log_prob(probe, y[:3]), _latent().log_prob(probe, y[:3]))


def test_refusals():
    latent = _latent()
    h, y = _rows()
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="pseudo_count must be positive"):
            latent.fit_label_vector_gaussians(h, y, pseudo_count=bad)
    with pytest.raises(ValueError, match="folds must be >= 2"):
        latent.fit_label_vector_gaussians(h, y, folds=1)
    with pytest.raises(ValueError, match=r"expected h \(N, V, d\) and y \(N, V\)"):
        latent.fit_label_vector_gaussians(h, y[:, :2])
    wide = NodeGaussianLatent(2, MAX_JOINT_DIM // 4 + 1, num_nodes=4)
    with pytest.raises(ValueError, match="limited to V d"):
        wide.fit_label_vector_gaussians(torch.zeros(2, 4, MAX_JOINT_DIM // 4 + 1), torch.zeros(2, 4, dtype=torch.long))


def test_fit_ends_with_joint_gaussians_that_the_model_uses_and_drops_them_to_train_again():
    graph = path_graph()
    x, y = toy_data(90)
    model = IGNN(graph, 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8), sigma=0.7)
    config = TrainConfig(epochs=2, batch_size=30, progress=False, inversion_check_samples=10,
                         label_vector_gaussians=True)
    history = fit(model, graph, x, y, config)
    latent = model.latent
    assert latent.pseudo_count in PSEUDO_COUNTS and history.final_shrinks is not None
    model.eval()
    with torch.no_grad():
        h, logdet, _ = model.encode(graph, x)
        torch.testing.assert_close(model.log_prob(graph, x, y), latent.log_prob(h, y) + logdet)
    # Every label vector of a 3-node binary graph occurs in 90 rows: the joint law serves all.
    assert len(latent.label_vectors) == 8
    samples = model.sample(graph, y[0], 50, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (50, 3, 2) and torch.isfinite(samples).all()
    boundary = model.node_uncertainty_sets(graph, y[0], level=0.9, num_points=16)
    centers, scales = latent.node_confidence_regions(y[0], 0.9)
    unit = torch.linalg.solve_triangular(scales, (model.encode(graph, boundary, logdet=False)[0] - centers)
                                         .unsqueeze(-1), upper=False).squeeze(-1)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(16, 3), atol=1e-4, rtol=0)
    boundary = model.uncertainty_set(graph, y[0], level=0.9, num_points=16)
    distance = latent.whitened_distance(model.encode(graph, boundary, logdet=False)[0], y[0])
    torch.testing.assert_close(distance, torch.full_like(distance, latent.confidence_radius(0.9)), atol=1e-4, rtol=0)
    fit(model, graph, x, y, TrainConfig(epochs=1, batch_size=30, progress=False, inversion_check_samples=0))
    assert latent.pseudo_count is None
