"""Conformal calibration against its finite-sample guarantees: exact coverage by Monte Carlo,
brute-force references, the adaptive bound on adversarial sequences, and calibrated flow sets on
exchangeable toys (three moons, the chordal graph) over repeated splits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from dgl_iflow import IGNN, TrainConfig, fit, metrics
from dgl_iflow.conformal import (
    SCORES, SplitConformal, adaptive_conformal, conformal_p_values, conformal_quantile, flow_scores, label_scores,
    label_sets, node_anomaly_scores,
)
from dgl_iflow.data import load_dataset
from dgl_iflow.models import NodeGaussianLatent
from graphs import path_graph


def _exact_coverage(n: int, level: float) -> float:
    """P(a new continuous score <= the split conformal threshold of n exchangeable ones)."""
    return min(math.ceil((n + 1) * level - 1e-9), n + 1) / (n + 1)


def test_quantile_is_the_ranked_score_and_infinite_beyond_the_sample():
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    # ceil(6 * 0.5) = 3rd smallest; ceil(6 * 0.8) = 5th; ceil(6 * 0.9) = 6 > 5.
    assert conformal_quantile(scores, 0.5).item() == 3.0
    assert conformal_quantile(scores, 0.8).item() == 5.0
    assert conformal_quantile(scores, 0.9).item() == math.inf
    per_node = torch.stack([scores, -scores], dim=1)
    torch.testing.assert_close(conformal_quantile(per_node, 0.5), torch.tensor([3.0, -3.0]))
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="level"):
            conformal_quantile(scores, bad)
    with pytest.raises(ValueError, match="at least one"):
        conformal_quantile(torch.zeros(0), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        conformal_quantile(torch.tensor([1.0, math.nan]), 0.5)


@pytest.mark.parametrize("n", [9, 19, 50])
@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_split_conformal_coverage_is_exact_for_exchangeable_scores(n, level):
    """Coverage is ceil((n+1) a) / (n+1), in [a, a + 1/(n+1)]: 40,000 independent calibrations."""
    trials = 40_000
    gen = torch.Generator().manual_seed(n)
    scores = torch.randn(n + 1, trials, generator=gen, dtype=torch.float64).exp()  # any continuous law
    covered = scores[-1] <= conformal_quantile(scores[:-1], level)
    exact = _exact_coverage(n, level)
    assert level <= exact <= level + 1 / (n + 1)
    assert abs(covered.double().mean().item() - exact) < 4 * math.sqrt(exact * (1 - exact) / trials) + 1e-12


def test_p_values_count_the_calibration_scores_at_least_as_large_and_are_super_uniform():
    calibration = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = conformal_p_values(calibration, torch.tensor([0.5, 2.0, 4.5]))
    torch.testing.assert_close(p, torch.tensor([5 / 5, 4 / 5, 1 / 5]))
    per_node = conformal_p_values(torch.stack([calibration, calibration], 1), torch.tensor([[2.0, 4.5]]))
    torch.testing.assert_close(per_node, torch.tensor([[4 / 5, 1 / 5]]))
    n, trials = 19, 40_000
    scores = torch.rand(n + 1, trials, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p = ((scores[:-1] >= scores[-1]).sum(0) + 1).double() / (n + 1)
    torch.testing.assert_close(conformal_p_values(scores[:-1, :200], scores[-1:, :200])[0], p[:200])
    for a in (0.05, 0.1, 0.5):
        exact = math.floor(a * (n + 1)) / (n + 1)  # P(p <= a) for continuous scores
        assert exact <= a
        assert abs((p <= a).double().mean().item() - exact) < 4 * math.sqrt(max(exact * (1 - exact), 1e-4) / trials)
    with pytest.raises(ValueError, match="agree"):
        conformal_p_values(torch.zeros(3, 2), torch.zeros(4, 3))
    # No calibration scores (a node never normal in the calibration rows): p = 1, never flagged.
    torch.testing.assert_close(conformal_p_values(torch.zeros(0), torch.tensor([5.0, -5.0])), torch.ones(2))


def test_split_conformal_object_remembers_its_calibration():
    split = SplitConformal(0.8)
    with pytest.raises(RuntimeError, match="fit"):
        split.contains(torch.zeros(2))
    split.fit(torch.arange(1.0, 10.0))  # ceil(10 * 0.8) = 8
    assert split.threshold.item() == 8.0
    torch.testing.assert_close(split.contains(torch.tensor([7.5, 8.0, 8.5])), torch.tensor([True, True, False]))
    torch.testing.assert_close(split.p_values(torch.tensor([8.5])), torch.tensor([0.2]))
    assert "n=9" in repr(split)


def _brute_force_adaptive(calibration, scores, level, step, window):
    """The algorithm re-done from scratch at every step, with numpy's sorted quantile."""
    seen, alpha, covered = list(calibration), 1 - level, []
    for value in scores:
        pool = np.sort(seen if window is None else seen[-window:])
        wanted = 1 - alpha
        if wanted <= 0:
            threshold = -math.inf
        elif wanted >= 1:
            threshold = math.inf
        else:
            rank = math.ceil((len(pool) + 1) * wanted - 1e-9)
            threshold = math.inf if rank > len(pool) else pool[rank - 1]
        covered.append(value <= threshold)
        alpha += step * ((1 - level) - (0 if covered[-1] else 1))
        seen.append(value)
    return covered


@pytest.mark.parametrize("window", [None, 30])
def test_adaptive_conformal_matches_the_algorithm_done_by_brute_force(window):
    gen = torch.Generator().manual_seed(0)
    calibration = torch.randn(40, generator=gen, dtype=torch.float64)
    scores = torch.randn(300, generator=gen, dtype=torch.float64) + torch.linspace(0, 3, 300, dtype=torch.float64)
    run = adaptive_conformal(calibration, scores, 0.9, step=0.05, window=window)
    assert run.covered.tolist() == _brute_force_adaptive(calibration.tolist(), scores.tolist(), 0.9, 0.05, window)
    assert run.thresholds.shape == run.levels.shape == (300,)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_adaptive_conformal_long_run_coverage_obeys_its_bound_on_a_shifting_sequence(level):
    """|coverage - level| <= (max(a, 1 - a) + step) / (step T) for any sequence: here one whose
    scores jump to ten times the calibration's halfway, where split conformal collapses."""
    gen = torch.Generator().manual_seed(1)
    T, step = 2000, 0.05
    calibration = torch.rand(100, generator=gen, dtype=torch.float64)
    scores = torch.rand(T, generator=gen, dtype=torch.float64) * torch.where(torch.arange(T) < T // 2, 1.0, 10.0)
    run = adaptive_conformal(calibration, scores, level, step=step)
    bound = (max(level, 1 - level) + step) / (step * T)
    assert abs(run.coverage - level) <= bound
    split = SplitConformal(level).fit(calibration)
    assert split.contains(scores[T // 2:]).double().mean().item() < 0.2


def test_adaptive_conformal_refusals():
    with pytest.raises(ValueError, match="step"):
        adaptive_conformal(torch.zeros(3), torch.zeros(3), 0.9, step=0.0)
    with pytest.raises(ValueError, match="1-D"):
        adaptive_conformal(torch.zeros(3, 2), torch.zeros(3), 0.9)
    with pytest.raises(ValueError, match="window"):
        adaptive_conformal(torch.zeros(3), torch.zeros(3), 0.9, window=0)


def test_label_scores_against_their_definitions():
    proba = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    labels = torch.tensor([1, 2])
    # APS without randomization: mass of the classes above, plus the label's own.
    torch.testing.assert_close(label_scores(proba, labels, "aps", randomized=False), torch.tensor([0.8, 0.9], dtype=torch.float64))
    torch.testing.assert_close(label_scores(proba, labels, "lac"), torch.tensor([0.7, 0.7], dtype=torch.float64))
    sets = label_sets(proba, 0.85, "aps", randomized=False)
    torch.testing.assert_close(sets, torch.tensor([[True, True, False], [False, True, False]]))
    # Randomized: the same draws give the same scores in label_scores and label_sets.
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    scores = label_scores(proba, labels, "aps", generator=gen())
    assert label_sets(proba, scores[0].item(), "aps", generator=gen())[0, 1]
    with pytest.raises(ValueError, match="method"):
        label_scores(proba, labels, "raps")


@pytest.mark.parametrize("method,randomized", [("aps", True), ("aps", False), ("lac", False)])
def test_label_sets_cover_labels_drawn_from_the_probabilities(method, randomized):
    """Per-node calibration on 500 samples of 3 nodes, coverage of 20,000 new ones at 0.9: exact
    (within Monte Carlo error of ceil(501 * 0.9) / 501) for randomized APS and LAC, at least 0.9
    for plain APS; nested sets as the threshold grows."""
    gen = torch.Generator().manual_seed(2)

    def draw(n):
        proba = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((n, 3))
        labels = torch.multinomial(proba.reshape(-1, 4), 1, generator=gen).reshape(n, 3)
        return proba, labels

    p_cal, y_cal = draw(500)
    split = SplitConformal(0.9).fit(label_scores(p_cal, y_cal, method, randomized, generator=gen))
    assert split.threshold.shape == (3,)
    p_test, y_test = draw(20_000)
    sets = label_sets(p_test, split.threshold, method, randomized, generator=gen)
    covered = sets.gather(-1, y_test.unsqueeze(-1)).double().mean().item()
    exact = _exact_coverage(500, 0.9)
    error = 4 * math.sqrt(0.09 / 500) + 4 * math.sqrt(0.09 / 60_000)
    if method == "aps" and not randomized:
        assert covered >= 0.9 - error
    else:
        assert abs(covered - exact) < error
    smaller = label_sets(p_test, split.threshold - 0.1, method, randomized, generator=torch.Generator().manual_seed(5))
    larger = label_sets(p_test, split.threshold, method, randomized, generator=torch.Generator().manual_seed(5))
    assert not (smaller & ~larger).any()


def test_calibration_error_and_reliability_bins_against_hand_counts():
    proba = torch.tensor([[[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.4, 0.6]]], dtype=torch.float64)
    labels = torch.tensor([[0, 1, 1, 0]])
    table = metrics.reliability_bins(proba, labels, bins=5)
    # top probabilities 0.95, 0.85 (bin 4), 0.7, 0.6 (bin 3); correct: yes, no, yes, no.
    np.testing.assert_array_equal(table.count, [0, 0, 0, 2, 2])
    np.testing.assert_allclose(table.confidence[3:], [0.65, 0.9])
    np.testing.assert_allclose(table.accuracy[3:], [0.5, 0.5])
    assert math.isclose(metrics.calibration_error(proba, labels, bins=5), 0.5 * 0.15 + 0.5 * 0.4)
    perfect = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    assert metrics.calibration_error(perfect, torch.tensor([[0]])) == 0.0


def test_precision_recall_against_hand_counts():
    result = metrics.precision_recall(torch.tensor([True, True, False, False, True]),
                                      torch.tensor([True, False, True, False, False]))
    assert result == dict(precision=1 / 3, recall=1 / 2, false_alarm_rate=2 / 3)
    assert math.isnan(metrics.precision_recall(torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool))["precision"])


def test_node_whitened_distance_is_the_mahalanobis_distance_of_the_node_marginal():
    latent = NodeGaussianLatent(2, 2, sigma=0.7, means=torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), num_nodes=3).double()
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([[0, 1, 1]]).expand(30, -1)
    mix = torch.randn(6, 6, generator=gen, dtype=torch.float64) * 0.3
    h = (torch.randn(30, 6, generator=gen, dtype=torch.float64) @ mix.T).reshape(-1, 3, 2)
    latent.fit_label_vector_gaussians(h, y, pseudo_count=1.0)
    probe = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 0, 0]])
    distance = latent.node_whitened_distance(probe, labels)
    chol = latent.joint_chols[0]
    cov, mean = chol @ chol.T, latent.joint_means[0].reshape(3, 2)
    for v in range(3):
        block = cov[2 * v:2 * v + 2, 2 * v:2 * v + 2]
        diff = probe[0, v] - mean[v]
        assert math.isclose(distance[0, v].item(), math.sqrt(diff @ torch.linalg.solve(block, diff)), rel_tol=1e-10)
    node_law = (probe[2:] - latent.node_law_centers(labels[2:])).norm(dim=-1) / 0.7
    torch.testing.assert_close(distance[2:], node_law)
    torch.testing.assert_close(latent.node_contains(probe, labels, 0.9), distance <= math.sqrt(chi2.ppf(0.9, 2)))


def _split_coverages(calibration_pool: torch.Tensor, level: float, n: int, repeats: int, seed: int):
    """Coverage of split conformal over random splits of a pool into n calibration scores and the rest."""
    gen = torch.Generator().manual_seed(seed)
    coverages = []
    for _ in range(repeats):
        order = torch.randperm(len(calibration_pool), generator=gen)
        cal, test = calibration_pool[order[:n]], calibration_pool[order[n:]]
        coverages.append(SplitConformal(level).fit(cal).contains(test).double().mean().item())
    return torch.tensor(coverages, dtype=torch.float64)


def _check_calibrated(scores: torch.Tensor, n: int) -> dict[float, tuple[float, float]]:
    """Over 300 random splits of exchangeable scores, the mean coverage is ceil((n+1)a)/(n+1)
    (exactly, for any fixed pool) within 4 Monte Carlo standard errors, at 0.5 / 0.9 / 0.95."""
    found = {}
    for level in (0.5, 0.9, 0.95):
        coverages = _split_coverages(scores, level, n, 300, seed=int(level * 100))
        exact = _exact_coverage(n, level)
        error = 4 * coverages.std().item() / math.sqrt(len(coverages))
        assert abs(coverages.mean().item() - exact) < error + 1e-9, (level, coverages.mean().item(), exact)
        found[level] = (coverages.mean().item(), exact)
    return found


@pytest.mark.slow
def test_calibrated_sets_hold_their_level_on_three_moons():
    """A briefly trained flow on three moons (a model far from exact, whose raw sets miss their
    level) calibrated on fresh draws holds the level on new draws, by both scores."""
    torch.manual_seed(0)
    train = load_dataset("three_moons", n=600, seed=0)
    model = IGNN(train.graph, 2, 3, conv="node", num_blocks=3, hidden_feats=(16, 16), sigma=0.5)
    fit(model, train.graph, train.x, train.y, TrainConfig(epochs=3, batch_size=100, lr=3e-3, progress=False))
    fresh = load_dataset("three_moons", n=2000, seed=1)
    for score in sorted(SCORES):
        scores = flow_scores(model, fresh.graph, fresh.x, fresh.y, score)
        assert scores.shape == (2000,)
        _check_calibrated(scores, n=200)


@pytest.mark.slow
def test_calibrated_sets_hold_their_level_on_the_chordal_graph():
    """The same on the 23-node chordal graph (whole graph samples of 23 x 2 features), with the
    raw chi-squared set of the briefly trained flow off its level and the calibrated radius drawing
    the set that holds it: the calibrated boundary lies at the calibrated latent radius."""
    torch.manual_seed(0)
    data = load_dataset("chordal", p=23, num_label_vectors=4, n_per_label=400, seed=0)
    x_train, y_train = data.split("train")
    model = IGNN(data.graph, 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8), sigma=0.7)
    fit(model, data.graph, x_train, y_train, TrainConfig(epochs=2, batch_size=100, lr=3e-3, progress=False))
    x_test, y_test = data.split("test")
    scores = flow_scores(model, data.graph, x_test, y_test, "distance")
    _check_calibrated(scores, n=min(150, len(scores) // 3))
    radius = SplitConformal(0.9).fit(scores[:150]).threshold.item()
    boundary = model.uncertainty_set(data.graph, y_test[0], level=0.9, num_points=5, radius=radius,
                                     generator=torch.Generator().manual_seed(0))
    distance = model.whitened_distance(data.graph, boundary, y_test[0].expand(5, -1))
    torch.testing.assert_close(distance, torch.full_like(distance, radius), atol=1e-4, rtol=1e-4)


def test_flow_scores_and_anomaly_scores_of_a_model():
    torch.manual_seed(0)
    model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8), sigma=0.7).double()
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    y = torch.tensor([[0, 1, 0]]).expand(5, -1)
    torch.testing.assert_close(flow_scores(model, path_graph(), x, y, "nll"), -model.log_prob(path_graph(), x, y))
    h = model.encode(path_graph(), x, logdet=False)[0]
    torch.testing.assert_close(flow_scores(model, path_graph(), x, y), model.latent.whitened_distance(h, y))
    node = node_anomaly_scores(model, path_graph(), x)
    torch.testing.assert_close(node, model.latent.node_whitened_distance(h, torch.zeros(5, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="score"):
        flow_scores(model, path_graph(), x, y, "energy")
    with pytest.raises(ValueError, match="radius"):
        model.uncertainty_set(path_graph(), y[0], radius=-1.0)
