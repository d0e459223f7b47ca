"""Two-sample statistics and prediction metrics for conditional graph generation.

Everything is sample-first, like the models, latents and data sets: two-sample
statistics take samples as rows, an array ``(n, ...)`` flattened to ``(n, p)``;
node-level prediction metrics take probabilities ``(*, V, K)`` and labels
``(*, V)`` of the same leading shape, e.g. ``(N, V, K)`` and ``(N, V)``.
Inputs may be torch tensors or numpy arrays; everything is computed in float64
on the CPU and returned as Python floats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from dgl_iflow.latents import NodeGaussianLatent

__all__ = [
    "KERNEL_OFFSET",
    "PermutationTest",
    "ReliabilityBins",
    "calibration_error",
    "energy_distance",
    "generation_scores",
    "mmd",
    "mmd_permutation_test",
    "node_accuracy",
    "node_log_loss",
    "paper_protocol",
    "precision_recall",
    "reconstruction_error",
    "reliability_bins",
    "rmse",
    "uncertainty_coverage",
]

#: Added to every squared distance, as in the reference evaluation protocol.
KERNEL_OFFSET = 1e-5

ArrayLike = Tensor | np.ndarray


def _float64(a: ArrayLike) -> Tensor:
    return torch.as_tensor(a).detach().to(device="cpu", dtype=torch.float64)


def _rows(a: ArrayLike, name: str) -> Tensor:
    t = _float64(a)
    if t.ndim < 1 or t.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 1, got {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def _pair(x: ArrayLike, y: ArrayLike, min_rows: int = 1) -> tuple[Tensor, Tensor]:
    xr, yr = _rows(x, "x"), _rows(y, "y")
    if xr.shape[1] != yr.shape[1]:
        raise ValueError(
            f"x and y rows differ in size: {xr.shape[1]} vs {yr.shape[1]} features per row"
        )
    if min(len(xr), len(yr)) < min_rows:
        raise ValueError(f"need at least {min_rows} rows in x and y, got {len(xr)} and {len(yr)}")
    return xr, yr


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    # The matmul shortcut loses digits to cancellation; differences stay exact.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()


def _unbiased_mmd(gram: Tensor, in_x: Tensor) -> Tensor:
    """Unbiased MMD^2 of several splits of the pooled rows at once.

    ``gram`` is the symmetric ``(N, N)`` pooled kernel matrix and ``in_x`` a
    ``(B, N)`` bool mask of the rows forming ``x`` in each split, all with the
    same count.  Block sums are quadratic forms in the masks, so ``B`` splits
    cost one matrix product instead of ``B`` gathers of ``gram``.
    """
    a = in_x.to(gram.dtype)
    b = 1.0 - a
    n = float(a[0].sum())
    m = gram.shape[0] - n
    diag = gram.diagonal()
    ga = a @ gram
    within_x = (ga * a).sum(1) - a @ diag
    within_y = ((b @ gram) * b).sum(1) - b @ diag
    cross = (ga * b).sum(1)
    return within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2.0 * cross / (n * m)


def mmd(
    x: ArrayLike, y: ArrayLike, alphas: Sequence[float] = (0.1, 1.0, 5.0, 10.0)
) -> dict[float, float]:
    r"""Unbiased squared maximum mean discrepancy for several Gaussian kernels.

    .. math::

        k_\alpha(a, b) = \exp\left(-\alpha(\lVert a - b\rVert^2 + 10^{-5})\right)

        \widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)}\sum_{i\ne j} k(x_i, x_j)
            + \frac{1}{m(m-1)}\sum_{i\ne j} k(y_i, y_j)
            - \frac{2}{nm}\sum_{i,j} k(x_i, y_j)

    The estimate is unbiased and therefore can be negative.

    Parameters
    ----------
    x : array_like
        ``(n, ...)`` samples, ``n >= 2``.
    y : array_like
        ``(m, ...)`` samples, ``m >= 2``, rows of the same size as ``x``.
    alphas : sequence of float
        Kernel inverse bandwidths.

    Returns
    -------
    dict of float to float
        ``{alpha: MMD^2}``.
    """
    xr, yr = _pair(x, y, min_rows=2)
    pooled = torch.cat([xr, yr])
    sq = _sq_dist(pooled, pooled) + KERNEL_OFFSET
    in_x = (torch.arange(len(pooled)) < len(xr)).unsqueeze(0)
    return {float(a): float(_unbiased_mmd(torch.exp(-a * sq), in_x)[0]) for a in alphas}


def energy_distance(x: ArrayLike, y: ArrayLike) -> float:
    r"""Energy distance between two samples (V-statistic, diagonals included).

    .. math::

        \mathcal{E} = \frac{2}{nm}\sum_{i,j} d(x_i, y_j)
            - \frac{1}{n^2}\sum_{i,j} d(x_i, x_j)
            - \frac{1}{m^2}\sum_{i,j} d(y_i, y_j),
        \qquad d(a, b) = \sqrt{\lVert a - b\rVert^2 + 10^{-5}}

    Parameters
    ----------
    x : array_like
        ``(n, ...)`` samples.
    y : array_like
        ``(m, ...)`` samples with rows of the same size.

    Returns
    -------
    float
        Without the offset this is the square of
        ``scipy.stats.energy_distance`` for one-dimensional data.
    """
    xr, yr = _pair(x, y)

    def mean_dist(a: Tensor, b: Tensor) -> Tensor:
        return (_sq_dist(a, b) + KERNEL_OFFSET).sqrt().mean()

    return float(2.0 * mean_dist(xr, yr) - mean_dist(xr, xr) - mean_dist(yr, yr))


def generation_scores(real: ArrayLike, generated: ArrayLike) -> dict[str, float]:
    """:func:`mmd` at every default kernel (``mmd_ALPHA``) and :func:`energy_distance` between real
    and generated rows ``(n, V, d)``."""
    scores = {f"mmd_{alpha:g}": value for alpha, value in mmd(real, generated).items()}
    return {**scores, "energy": energy_distance(real, generated)}


def rmse(prediction: ArrayLike, truth: ArrayLike) -> float:
    """Root mean squared error over every entry of two arrays of one shape."""
    prediction, truth = (torch.as_tensor(a).detach().cpu().to(torch.float64) for a in (prediction, truth))
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} must have one shape")
    return float((prediction - truth).pow(2).mean().sqrt())


@dataclass(frozen=True)
class PermutationTest:
    """Result of :func:`mmd_permutation_test`.

    Attributes
    ----------
    statistic : float
        Unbiased MMD^2 of the observed split.
    p_value : float
        ``(1 + #{null >= statistic}) / (1 + B)``.
    null : np.ndarray
        ``(B,)`` MMD^2 of the permuted splits.
    """

    statistic: float
    p_value: float
    null: np.ndarray

    def null_quantile(self, q: float = 0.95) -> float:
        """``q``-quantile of the permutation null: an MMD^2 threshold for size ``1 - q``."""
        return float(np.quantile(self.null, q))


def mmd_permutation_test(
    x: ArrayLike,
    y: ArrayLike,
    alpha: float = 0.1,
    num_permutations: int = 200,
    seed: int = 0,
) -> PermutationTest:
    """Permutation test of equal distributions with the unbiased MMD^2.

    The pooled rows are relabelled ``num_permutations`` times; permutation
    ``b`` is the ``b``-th call of ``numpy.random.default_rng(seed).permutation``
    on ``n + m`` indices, its first ``n`` entries forming the new ``x``.

    Parameters
    ----------
    x : array_like
        ``(n, ...)`` samples, ``n >= 2``.
    y : array_like
        ``(m, ...)`` samples, ``m >= 2``.
    alpha : float
        Kernel inverse bandwidth, as in :func:`mmd`.
    num_permutations : int
        Number ``B`` of random relabellings.
    seed : int
        Seed of the permutations.

    Returns
    -------
    PermutationTest
    """
    if num_permutations < 1:
        raise ValueError(f"num_permutations must be >= 1, got {num_permutations}")
    xr, yr = _pair(x, y, min_rows=2)
    pooled = torch.cat([xr, yr])
    gram = torch.exp(-alpha * (_sq_dist(pooled, pooled) + KERNEL_OFFSET))
    total, n = len(pooled), len(xr)
    rng = np.random.default_rng(seed)
    perms = torch.from_numpy(np.stack([rng.permutation(total) for _ in range(num_permutations)]))
    in_x = torch.zeros(num_permutations + 1, total, dtype=torch.bool)
    in_x[0, :n] = True
    in_x[1:].scatter_(1, perms[:, :n], True)
    stats = _unbiased_mmd(gram, in_x).numpy()
    statistic, null = float(stats[0]), stats[1:]
    p_value = (1.0 + np.count_nonzero(null >= statistic)) / (1.0 + num_permutations)
    return PermutationTest(statistic, float(p_value), null)


def paper_protocol(
    x: ArrayLike,
    y: ArrayLike,
    generate: Callable[[Tensor, int], Tensor],
    top: int = 3,
    alpha: float = 0.1,
    norm_cutoff: float = 100.0,
) -> dict[str, Any]:
    """Conditional-generation quality as evaluated by the reference protocol.

    For each of the ``top`` most frequent label vectors ``Y`` among the rows
    of ``y`` (ties broken by lexicographic order of ``Y``), the ``n`` real
    graphs with labels ``Y`` are compared with ``generate(Y, n)``.  A
    generated graph whose per-channel norm over nodes ``||X[:, c]||_2`` is
    ``>= norm_cutoff`` (or NaN) for any channel ``c`` is treated as diverged
    and dropped, together with the real graph at the same row index.  The kept
    rows, flattened to ``V * d``, give the unbiased MMD^2 at ``alpha`` and
    the energy distance.

    Parameters
    ----------
    x : array_like
        ``(N, V, d)`` real node features.
    y : array_like
        ``(N, V)`` integer node labels.
    generate : callable
        ``generate(Y, n)`` with ``Y`` a ``(V,)`` int64 tensor returns
        ``(n, V, d)`` generated features, e.g.
        ``lambda Y, n: model.sample(graph, Y, n)`` or a baseline's ``generate``;
        called under ``torch.no_grad``.
    top : int
        Number of label vectors to evaluate.
    alpha : float
        Kernel inverse bandwidth of the MMD.
    norm_cutoff : float
        Channel norm at which a generated graph counts as diverged.

    Returns
    -------
    dict
        ``"per_label"``: ``{tuple(Y): {"count", "kept", "mmd", "energy"}}``
        in decreasing frequency; ``"mmd"`` and ``"energy"``: averages over
        label vectors weighted by ``kept``.  Label vectors with fewer than
        two kept rows get NaN statistics and are left out of the averages,
        which are NaN if none remain.
    """
    xs, ys = _float64(x), torch.as_tensor(y).detach().cpu().long()
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(
            f"expected x (N, V, d) and y (N, V), got {tuple(xs.shape)} and {tuple(ys.shape)}"
        )
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    uniq, inverse, counts = torch.unique(ys, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(-counts, stable=True)[:top]

    per_label: dict[tuple[int, ...], dict[str, float | int]] = {}
    for u in order.tolist():
        labels = uniq[u]
        real = xs[inverse == u]
        count = len(real)
        with torch.no_grad():
            fake = _float64(generate(labels.clone(), count))
        if fake.shape != real.shape:
            raise ValueError(
                f"generate({tuple(labels.tolist())}, {count}) returned shape "
                f"{tuple(fake.shape)}, expected {tuple(real.shape)}"
            )
        keep = (fake.norm(dim=1) < norm_cutoff).all(dim=1)
        kept = int(keep.sum())
        if kept >= 2:
            stat_mmd = mmd(real[keep], fake[keep], alphas=(alpha,))[float(alpha)]
            stat_energy = energy_distance(real[keep], fake[keep])
        else:
            stat_mmd = stat_energy = float("nan")
        per_label[tuple(labels.tolist())] = {
            "count": count,
            "kept": kept,
            "mmd": stat_mmd,
            "energy": stat_energy,
        }

    scored = [e for e in per_label.values() if e["kept"] >= 2]
    weight = sum(e["kept"] for e in scored)

    def weighted(key: str) -> float:
        return sum(e["kept"] * e[key] for e in scored) / weight if weight else float("nan")

    return {"per_label": per_label, "mmd": weighted("mmd"), "energy": weighted("energy")}


def _proba_labels(proba: ArrayLike, y: ArrayLike) -> tuple[Tensor, Tensor]:
    """Validate ``(*, V, K)`` probabilities against ``(*, V)`` labels of the same leading shape."""
    p = _float64(proba)
    labels = torch.as_tensor(y).detach().cpu().long()
    if p.ndim < 2 or labels.shape != p.shape[:-1]:
        raise ValueError(
            f"expected proba (*, V, K) and labels (*, V) of the same leading shape, "
            f"got {tuple(p.shape)} and {tuple(labels.shape)}"
        )
    if ((labels < 0) | (labels >= p.shape[-1])).any():
        raise ValueError(f"labels must lie in [0, {p.shape[-1]})")
    return p, labels


def node_accuracy(proba: ArrayLike, y: ArrayLike) -> float:
    """Fraction of (sample, node) pairs whose most probable class is the label.

    Parameters
    ----------
    proba : array_like
        ``(*, V, K)`` class probabilities or any monotone scores, e.g. ``(N, V, K)``.
    y : array_like
        ``(*, V)`` labels, the leading shape of ``proba``.

    Returns
    -------
    float
    """
    p, labels = _proba_labels(proba, y)
    return float((p.argmax(-1) == labels).double().mean())


def node_log_loss(proba: ArrayLike, y: ArrayLike, eps: float = 1e-15) -> float:
    r"""Mean negative log-probability of the true class.

    .. math::

        -\frac{1}{N |V|}\sum_{i, v} \log \max(p_{i v y_{iv}}, \epsilon)

    averaged over all leading indices ``i`` (samples) and nodes ``v``.  The
    clip keeps a confidently wrong node finite.

    Parameters
    ----------
    proba : array_like
        ``(*, V, K)`` class probabilities, e.g. ``(N, V, K)``.
    y : array_like
        ``(*, V)`` labels, the leading shape of ``proba``.
    eps : float
        Smallest probability used.

    Returns
    -------
    float
    """
    p, labels = _proba_labels(proba, y)
    picked = p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return float(-picked.clamp(min=eps).log().mean())


@dataclass
class ReliabilityBins:
    """Top-class confidence against accuracy in equal-width confidence bins (:func:`reliability_bins`).

    Attributes
    ----------
    confidence, accuracy : numpy.ndarray
        ``(B,)`` mean top-class probability and share correct of the predictions in each bin
        (NaN where a bin is empty).
    count : numpy.ndarray
        ``(B,)`` predictions per bin.
    edges : numpy.ndarray
        ``(B + 1,)`` bin edges on [0, 1].
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    edges: np.ndarray


def reliability_bins(proba: ArrayLike, y: ArrayLike, bins: int = 10) -> ReliabilityBins:
    """The reliability diagram's data: every (sample, node)'s top-class probability, binned.

    Parameters
    ----------
    proba : array_like
        ``(*, V, K)`` class probabilities.
    y : array_like
        ``(*, V)`` labels.
    bins : int
        Equal-width bins on [0, 1] (a confidence of exactly 1 falls in the last).

    Returns
    -------
    ReliabilityBins
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, labels = _proba_labels(proba, y)
    confidence, predicted = p.max(dim=-1)
    confidence, correct = confidence.flatten().numpy(), (predicted == labels).flatten().double().numpy()
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / count
        accuracy = np.bincount(index, correct, bins) / count
    return ReliabilityBins(mean_confidence, accuracy, count, np.linspace(0.0, 1.0, bins + 1))


def calibration_error(proba: ArrayLike, y: ArrayLike, bins: int = 10) -> float:
    r"""Expected calibration error of the top-class probability (Guo et al. 2017).

    .. math::

        \mathrm{ECE} = \sum_b \frac{n_b}{n} \left| \mathrm{acc}_b - \mathrm{conf}_b \right|

    over the equal-width confidence bins of :func:`reliability_bins`, every (sample, node) one
    prediction. 0 for perfectly calibrated probabilities (in the limit of many predictions).
    """
    table = reliability_bins(proba, y, bins)
    filled = table.count > 0
    gaps = np.abs(table.accuracy[filled] - table.confidence[filled])
    return float((table.count[filled] * gaps).sum() / table.count.sum())


def precision_recall(flagged: ArrayLike, positive: ArrayLike) -> dict[str, float]:
    """Precision, recall and false-alarm rate of boolean ``flagged`` against boolean ``positive`` (same shape).

    Precision is NaN when nothing is flagged, recall when nothing is positive, the false-alarm
    rate (the share of negatives flagged) when everything is.
    """
    flag = torch.as_tensor(flagged).detach().cpu().bool()
    truth = torch.as_tensor(positive).detach().cpu().bool()
    if flag.shape != truth.shape:
        raise ValueError(f"flagged and positive must have one shape, got {tuple(flag.shape)} and {tuple(truth.shape)}")
    hits = float((flag & truth).sum())

    def share(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator else float("nan")

    return dict(precision=share(hits, float(flag.sum())), recall=share(hits, float(truth.sum())),
                false_alarm_rate=share(float((flag & ~truth).sum()), float((~truth).sum())))


def uncertainty_coverage(
    latent: NodeGaussianLatent, h: Tensor, y: Tensor, level: float, per_node: bool = False
) -> float:
    """Fraction of whole latent samples inside their ``level`` set (``latent.contains``), or with
    ``per_node`` the fraction of node latents inside their node's set (``latent.node_contains``).

    Close to ``level`` when the latents really follow ``latent``.

    Parameters
    ----------
    latent : NodeGaussianLatent
        The latent distribution.
    h : Tensor
        ``(*, V, d)`` latents, e.g. ``(N, V, d)`` from ``model.encode``.
    y : Tensor
        ``(*, V)`` labels, the leading shape of ``h``.
    level : float
        Nominal coverage in ``(0, 1)``.
    per_node : bool
        Count nodes, each against its own set, instead of whole samples.

    Returns
    -------
    float
    """
    if tuple(torch.as_tensor(y).shape) != tuple(h.shape[:-1]):
        raise ValueError(
            f"expected h (*, V, d) and y (*, V) of the same leading shape, "
            f"got {tuple(h.shape)} and {tuple(torch.as_tensor(y).shape)}"
        )
    inside = latent.node_contains(h, y, level) if per_node else latent.contains(h, y, level)
    return float(inside.double().mean())


def reconstruction_error(x: ArrayLike, x_rec: ArrayLike) -> dict[str, float]:
    r"""Relative reconstruction error per sample, summarised by mean and max.

    .. math::

        e_i = \frac{\lVert x_i - \hat x_i\rVert_2}{\lVert x_i\rVert_2}

    Parameters
    ----------
    x : array_like
        ``(n, ...)`` originals, e.g. ``(N, V, d)``; pass ``x[None]`` for a single graph.
    x_rec : array_like
        Reconstructions of the same shape.

    Returns
    -------
    dict
        ``{"mean": mean_i e_i, "max": max_i e_i}``.  An all-zero row divides
        by the smallest positive float, so it scores 0 only if reconstructed
        exactly.
    """
    a, b = _float64(x), _float64(x_rec)
    if a.shape != b.shape:
        raise ValueError(f"x and x_rec differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = _rows(a, "x"), _rows(b, "x_rec")
    tiny = torch.finfo(torch.float64).tiny
    err = (a - b).norm(dim=1) / a.norm(dim=1).clamp(min=tiny)
    return {"mean": float(err.mean()), "max": float(err.max())}
