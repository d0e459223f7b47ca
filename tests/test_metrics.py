"""Tests of the two-sample statistics and prediction metrics."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import energy_distance as scipy_energy
from scipy.stats import norm

from dgl_iflow import metrics
from dgl_iflow.models import NodeGaussianLatent

OFFSET = 1e-5


def _brute_mmd(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)

    def k(a, b):
        return math.exp(-alpha * (float(np.sum((a - b) ** 2)) + OFFSET))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def _brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)

    def mean_d(a, b):
        return np.mean([math.sqrt(float(np.sum((u - v) ** 2)) + OFFSET) for u in a for v in b])

    return 2 * mean_d(x, y) - mean_d(x, x) - mean_d(y, y)


def _gaussian_mmd(p: int, s: float, shift: float, alpha: float) -> float:
    """MMD^2 between N(m1, s^2 I_p) and N(m2, s^2 I_p), ||m1 - m2|| = shift.

    X - X' ~ N(m1 - m2, 2 s^2 I) and E exp(-alpha ||W||^2) for
    W ~ N(mu, t^2 I_p) is (1 + 2 alpha t^2)^(-p/2) exp(-alpha ||mu||^2 / (1 + 2 alpha t^2)).
    """
    scale = 1 + 4 * alpha * s**2
    same = scale ** (-p / 2)
    cross = same * math.exp(-alpha * shift**2 / scale)
    return math.exp(-alpha * OFFSET) * 2 * (same - cross)


def test_mmd_matches_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 2, 2)), rng.normal(0.5, 1.2, size=(5, 4))
    out = metrics.mmd(x, y)
    assert list(out) == [0.1, 1.0, 5.0, 10.0]
    for alpha, value in out.items():
        assert value == pytest.approx(_brute_mmd(x, y, alpha), rel=1e-12, abs=1e-15)


def test_energy_matches_double_loop():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 3)), rng.normal(1.0, 0.5, size=(9, 3))
    assert metrics.energy_distance(x, y) == pytest.approx(_brute_energy(x, y), rel=1e-12)
    assert metrics.energy_distance(torch.tensor(x), torch.tensor(y).float()) == pytest.approx(
        _brute_energy(x, y.astype(np.float32).astype(np.float64)), rel=1e-12
    )


def test_identical_samples_give_near_zero_mmd():
    x = np.random.default_rng(2).normal(size=(40, 3))
    out = metrics.mmd(x, x, alphas=(0.1, 1.0))
    for alpha, value in out.items():
        # Cross terms include the diagonal k(x_i, x_i) = exp(-alpha * 1e-5) that
        # the within terms exclude, which leaves a small negative O(1/n) value.
        assert value == pytest.approx(_brute_mmd(x, x, alpha), rel=1e-12)
        assert -2 / len(x) < value < 0
    assert metrics.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_statistics_are_invariant_to_row_order():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 4)), rng.normal(0.3, 1.0, size=(15, 4))
    px, py = x[rng.permutation(20)], y[rng.permutation(15)]
    for alpha, value in metrics.mmd(x, y).items():
        assert metrics.mmd(px, py)[alpha] == pytest.approx(value, rel=1e-12)
    assert metrics.energy_distance(px, py) == pytest.approx(metrics.energy_distance(x, y))


def test_mmd_of_shifted_gaussians_matches_closed_form():
    p, s, shift, n = 2, 1.0, 3.0, 1500
    gen = torch.Generator().manual_seed(4)
    x = s * torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = s * torch.randn(n, p, generator=gen, dtype=torch.float64)
    y[:, 0] += shift
    out = metrics.mmd(x, y, alphas=(0.1, 0.5))
    for alpha in (0.1, 0.5):
        expected = _gaussian_mmd(p, s, shift, alpha)
        # Over 20 seeds the estimate's relative spread here was below 3%, so
        # 10% is about four standard deviations.
        assert out[alpha] == pytest.approx(expected, rel=0.1)
    # Wrong closed forms are far away: no shift, or no 4 alpha s^2 broadening.
    assert abs(out[0.5] - _gaussian_mmd(p, 0.0, shift, 0.5)) > 0.5 * out[0.5]


def test_energy_agrees_with_scipy_in_one_dimension():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=50), rng.normal(0.7, 1.5, size=70)
    ours = metrics.energy_distance(x[:, None], y[:, None])
    # scipy returns the square root of the offset-free statistic; each
    # sqrt(d^2 + 1e-5) exceeds |d| by at most sqrt(1e-5), so 2 * sqrt(1e-5) bounds the gap.
    assert abs(ours - scipy_energy(x, y) ** 2) <= 2 * math.sqrt(OFFSET)
    assert abs(ours - scipy_energy(x, y) ** 2) > 0


def test_energy_of_one_dimensional_gaussians_matches_closed_form():
    mu, s2, n = 3.0, 2.0, 3000
    rng = np.random.default_rng(6)
    x, y = rng.normal(0.0, 1.0, n), rng.normal(mu, math.sqrt(s2), n)

    def mean_abs(m, var):
        # E|W| for W ~ N(m, var): the folded-normal mean.
        t = math.sqrt(var)
        return t * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * var)) + m * (
            1 - 2 * norm.cdf(-m / t)
        )

    expected = 2 * mean_abs(mu, 1 + s2) - mean_abs(0, 2) - mean_abs(0, 2 * s2)
    # Over 10 seeds the estimate's relative spread here was 2.5%.
    assert metrics.energy_distance(x[:, None], y[:, None]) == pytest.approx(expected, rel=0.1)


def test_input_validation():
    with pytest.raises(ValueError, match="rows differ in size: 3 vs 4"):
        metrics.mmd(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.mmd(np.zeros((1, 3)), np.zeros((5, 3)))


def test_permutation_null_matches_brute_force():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    result = metrics.mmd_permutation_test(x, y, alpha=0.5, num_permutations=30, seed=11)
    pooled = np.concatenate([x, y])
    perms = np.random.default_rng(11)
    expected = []
    for _ in range(30):
        idx = perms.permutation(11)
        expected.append(_brute_mmd(pooled[idx[:6]], pooled[idx[6:]], 0.5))
    np.testing.assert_allclose(result.null, expected, rtol=1e-10, atol=1e-14)
    assert result.statistic == pytest.approx(_brute_mmd(x, y, 0.5), rel=1e-12)
    assert result.p_value == (1 + np.sum(np.array(expected) >= result.statistic)) / 31
    assert result.null_quantile(0.9) == pytest.approx(np.quantile(expected, 0.9))


def test_permutation_p_value_counts_ties():
    # With alpha = 0 every kernel value is exactly 1, so every split's
    # statistic is exactly 0: all permutations tie with the observed split.
    rng = np.random.default_rng(13)
    result = metrics.mmd_permutation_test(
        rng.normal(size=(4, 2)), rng.normal(size=(3, 2)), alpha=0.0, num_permutations=9
    )
    assert result.statistic == 0.0 and np.all(result.null == 0.0)
    assert result.p_value == 1.0


def test_permutation_test_detects_shift_and_is_calibrated():
    rng = np.random.default_rng(8)
    shifted = metrics.mmd_permutation_test(
        rng.normal(size=(50, 2)), rng.normal(1.0, 1.0, size=(50, 2)), num_permutations=100
    )
    assert shifted.p_value == pytest.approx(1 / 101)
    assert shifted.statistic > shifted.null_quantile(0.99)
    # A random split makes every distinct pair equally likely in each block,
    # so the unbiased statistic averages exactly 0 over all permutations.
    null = shifted.null
    assert abs(null.mean()) < 4 * null.std() / math.sqrt(len(null))
    # Under equal distributions a 5% test rejects about 5% of the time:
    # 40 draws give 2 rejections on average, more than 8 has probability < 1e-3.
    rejections = 0
    for seed in range(40):
        draw = np.random.default_rng(100 + seed)
        res = metrics.mmd_permutation_test(
            draw.normal(size=(30, 2)), draw.normal(size=(30, 2)), num_permutations=100, seed=seed
        )
        rejections += res.statistic > res.null_quantile(0.95)
    assert rejections <= 8


def _toy_graphs(seed: int = 9):
    """60 graphs on 3 nodes with 2 channels; label vectors of frequency 30, 20, 7, 3."""
    rng = np.random.default_rng(seed)
    patterns = np.array([[0, 1, 1], [1, 0, 1], [2, 2, 0], [0, 0, 0]])
    y = np.repeat(patterns, [20, 30, 7, 3], axis=0)
    order = rng.permutation(len(y))
    y = y[order]
    x = rng.normal(size=(len(y), 3, 2)) + y[..., None]
    return torch.tensor(x), torch.tensor(y)


def _rows_of(x, y, labels):
    return x[(y == torch.tensor(labels)).all(1)]


def test_paper_protocol_with_real_rows_and_shifted_rows():
    x, y = _toy_graphs()
    calls = []

    def real(labels, n):
        calls.append((labels.dtype, tuple(labels.shape), n))
        return _rows_of(x, y, labels.tolist())

    out = metrics.paper_protocol(x, y, real, top=3, alpha=0.1)
    assert list(out["per_label"]) == [(1, 0, 1), (0, 1, 1), (2, 2, 0)]
    assert calls == [(torch.int64, (3,), 30), (torch.int64, (3,), 20), (torch.int64, (3,), 7)]
    for key, entry in out["per_label"].items():
        rows = _rows_of(x, y, list(key))
        assert entry["count"] == entry["kept"] == len(rows)
        assert entry["mmd"] == pytest.approx(_brute_mmd(rows.numpy(), rows.numpy(), 0.1))
        assert -2 / len(rows) < entry["mmd"] < 0
        assert entry["energy"] == pytest.approx(0.0, abs=1e-12)

    def shifted(labels, n):
        return _rows_of(x, y, labels.tolist()) + 3.0

    out = metrics.paper_protocol(x, y, shifted, top=2, alpha=0.1)
    assert len(out["per_label"]) == 2
    total, weighted_mmd, weighted_energy = 0, 0.0, 0.0
    for key, entry in out["per_label"].items():
        rows = _rows_of(x, y, list(key)).numpy()
        assert entry["mmd"] == pytest.approx(_brute_mmd(rows, rows + 3.0, 0.1), rel=1e-10)
        assert entry["energy"] == pytest.approx(_brute_energy(rows, rows + 3.0), rel=1e-10)
        assert entry["mmd"] > 0.5
        total += entry["kept"]
        weighted_mmd += entry["kept"] * entry["mmd"]
        weighted_energy += entry["kept"] * entry["energy"]
    assert out["mmd"] == pytest.approx(weighted_mmd / total)
    assert out["energy"] == pytest.approx(weighted_energy / total)


def test_paper_protocol_drops_diverged_rows_by_channel_norm():
    x, y = _toy_graphs()
    labels = (1, 0, 1)
    rows = _rows_of(x, y, list(labels))
    fake = rows.clone() + 0.5
    # Channel 0 norm over 3 nodes is 60 * sqrt(3) >= 100 although no entry is: dropped.
    fake[4, :, 0] = 60.0
    # Infinite channel: dropped.
    fake[11, 2, 1] = float("inf")
    # Channel 1 norm exactly at the cutoff: dropped.
    fake[15, :, 1] = torch.tensor([0.0, 60.0, 80.0])
    # Both channel norms 80 < 100 while the whole graph's norm is 113: kept.
    fake[20, :, 0] = 80 / math.sqrt(3)
    fake[20, :, 1] = -80 / math.sqrt(3)

    def generate(lab, n):
        assert tuple(lab.tolist()) == labels
        return fake

    entry = metrics.paper_protocol(x, y, generate, top=1, alpha=0.1)["per_label"][labels]
    keep = np.ones(30, dtype=bool)
    keep[[4, 11, 15]] = False
    assert (entry["count"], entry["kept"]) == (30, 27)
    real_kept, fake_kept = rows.numpy()[keep], fake.numpy()[keep]
    assert entry["mmd"] == pytest.approx(_brute_mmd(real_kept, fake_kept, 0.1), rel=1e-10)
    assert entry["energy"] == pytest.approx(_brute_energy(real_kept, fake_kept), rel=1e-10)


def test_paper_protocol_skips_label_vectors_with_too_few_kept_rows():
    x, y = _toy_graphs()

    def generate(labels, n):
        out = _rows_of(x, y, labels.tolist()).clone() + 0.5
        # Keep one row of the rarest label vector and two of the second.
        if n == 7:
            out[1:] = 1e3
        if n == 20:
            out[2:] = 1e3
        return out

    out = metrics.paper_protocol(x, y, generate, top=3)
    rare = out["per_label"][(2, 2, 0)]
    assert rare["kept"] == 1 and math.isnan(rare["mmd"]) and math.isnan(rare["energy"])
    first, second = out["per_label"][(1, 0, 1)], out["per_label"][(0, 1, 1)]
    assert second["kept"] == 2 and math.isfinite(second["mmd"])
    assert out["mmd"] == pytest.approx((30 * first["mmd"] + 2 * second["mmd"]) / 32)
    assert out["energy"] == pytest.approx((30 * first["energy"] + 2 * second["energy"]) / 32)


def test_node_accuracy_and_log_loss():
    # Sample-first: proba (N, V, K) = (2, 2, 3), labels (N, V).
    proba = torch.tensor([[[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]], [[0.1, 0.1, 0.8], [0.5, 0.4, 0.1]]])
    y = torch.tensor([[0, 1], [1, 2]])
    assert metrics.node_accuracy(proba, y) == pytest.approx(0.5)
    expected = -np.mean(np.log([0.7, 0.6, 0.1, 0.1]))
    assert metrics.node_log_loss(proba, y) == pytest.approx(expected, rel=1e-6)
    # numpy inputs and any number of leading dimensions give the same values.
    assert metrics.node_accuracy(proba.numpy()[None], y.numpy()[None]) == pytest.approx(0.5)
    assert metrics.node_log_loss(proba[None], y[None]) == pytest.approx(expected, rel=1e-6)
    # One label vector (V,) is expanded over the samples by the caller: labels
    # [0, 1] per node score 0.5; expanding them over nodes instead would give 0.25.
    per_node = torch.tensor([0, 1])
    assert metrics.node_accuracy(proba, per_node.expand(2, 2)) == pytest.approx(0.5)
    assert metrics.node_accuracy(proba, per_node[:, None].expand(2, 2)) == pytest.approx(0.25)
    zero = torch.tensor([[0.0, 1.0]])
    assert metrics.node_log_loss(zero, torch.tensor([0])) == pytest.approx(-math.log(1e-15))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        metrics.node_accuracy(proba, torch.tensor([[0, 3], [0, 0]]))
    with pytest.raises(ValueError, match=r"got \(2, 2, 3\) and \(3,\)"):
        metrics.node_log_loss(proba, torch.tensor([0, 1, 2]))
    # Labels must have exactly the leading shape: no silent broadcasting.
    with pytest.raises(ValueError, match=r"same leading shape, got \(2, 2, 3\) and \(2,\)"):
        metrics.node_accuracy(proba, per_node)
    with pytest.raises(ValueError, match=r"same leading shape, got \(2, 2, 3\) and \(1, 2, 2\)"):
        metrics.node_accuracy(proba, y[None])


def test_uncertainty_coverage_matches_level():
    latent = NodeGaussianLatent(3, 2, sigma=0.5, num_nodes=8).double()
    y = torch.arange(8) % 3
    h = latent.sample(y, 3000, generator=torch.Generator().manual_seed(12))
    assert h.shape == (3000, 8, 2)
    labels = y.expand(3000, 8)
    coverage = metrics.uncertainty_coverage(latent, h, labels, 0.8, per_node=True)
    assert abs(coverage - 0.8) < 3 * math.sqrt(0.8 * 0.2 / h[..., 0].numel())
    assert metrics.uncertainty_coverage(latent, h + 10.0, labels, 0.8, per_node=True) == 0.0
    whole = metrics.uncertainty_coverage(latent, h, labels, 0.8)
    assert abs(whole - 0.8) < 3 * math.sqrt(0.8 * 0.2 / len(h))
    # Moving node 0's latents away leaves the other 7 nodes' coverage: the node axis is 1.
    moved = h.clone()
    moved[:, 0] += 10.0
    inside = latent.node_contains(h, labels, 0.8)
    assert inside.shape == (3000, 8)
    assert metrics.uncertainty_coverage(latent, moved, labels, 0.8, per_node=True) == pytest.approx(
        float(inside[:, 1:].double().sum()) / inside.numel(), rel=1e-12)
    assert metrics.uncertainty_coverage(latent, moved, labels, 0.8) == 0.0  # whole samples moved out
    with pytest.raises(ValueError, match=r"same leading shape, got \(3000, 8, 2\) and \(8,\)"):
        metrics.uncertainty_coverage(latent, h, y, 0.8)


def test_reconstruction_error_per_sample():
    x = np.array([[[3.0, 4.0]], [[1.0, 0.0]], [[0.0, 0.0]]])
    rec = x.copy()
    rec[0, 0, 0] += 0.5
    rec[1, 0, 1] -= 0.1
    out = metrics.reconstruction_error(x, torch.tensor(rec))
    assert out["max"] == pytest.approx(0.1)
    assert out["mean"] == pytest.approx((0.5 / 5 + 0.1 + 0.0) / 3)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.reconstruction_error(x, rec[:2])
