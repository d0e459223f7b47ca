r"""Conformal calibration: sets and p-values that hold their level on new data.

The model's own sets (:meth:`~dgl_iflow.models.base.FlowModel.uncertainty_set`) hold exactly
their level of the *model's* samples; on real data they hold what the model's fit allows. A
conformal method (Vovk, Gammerman and Shafer 2005) turns any score into a set with a guarantee
on the data itself: with :math:`n` calibration scores :math:`s_1, \dots, s_n` and

.. math::

    \hat q = s_{(\lceil (n + 1) a \rceil)} \quad (\text{the } k\text{-th smallest; } +\infty
    \text{ when } k > n),

a new score :math:`s` exchangeable with the calibration ones satisfies
:math:`a \le P(s \le \hat q) \le a + 1/(n + 1)` (the upper bound when scores have no ties).

What is here, each a function of scores, so any model or baseline can use it:

- :func:`conformal_quantile` and :class:`SplitConformal`: split conformal calibration of a
  score, per sample or per node.
- :func:`conformal_p_values`: :math:`p = (1 + \#\{i : s_i \ge s\}) / (n + 1)`, with
  :math:`P(p \le a) \le a` for exchangeable scores: anomaly scores users can threshold.
- :func:`adaptive_conformal`: adaptive conformal inference (Gibbs and Candès 2021) for
  sequences, where exchangeability fails (traffic, solar): the level used is moved after every
  step, so that the long-run miss rate is within :math:`(\max(a_1, 1 - a_1) + \gamma) / (\gamma T)`
  of :math:`1 - a` for *any* sequence.
- :func:`label_scores` and :func:`label_sets`: conformal sets of node labels from class
  probabilities, by adaptive prediction sets (``"aps"``, Romano, Sesia and Candès 2020) or the
  least-ambiguous threshold (``"lac"``, Sadinle, Lei and Wasserman 2019).
- :func:`interval_scores` and :func:`scale_intervals`: conformal intervals for real-valued
  targets, any model's intervals widened or narrowed about their centres until they hold their
  level (normalized residuals, Lei et al. 2018).

The scores of a flow model are in :data:`SCORES`: the whitened latent distance of
:meth:`~dgl_iflow.latents.NodeGaussianLatent.whitened_distance` (``"distance"``, whose
calibrated threshold is again a latent radius, so the calibrated set is an ellipsoid's image
like the raw one) and the negative log-likelihood (``"nll"``).

>>> import torch
>>> scores = torch.arange(1.0, 20.0)           # 19 calibration scores
>>> SplitConformal(0.9).fit(scores).threshold  # the 18th smallest: ceil(20 * 0.9) = 18
tensor(18.)
>>> conformal_p_values(scores, torch.tensor([18.5]))
tensor([0.1000])
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .graphs import GraphLike
    from .models.base import FlowModel


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(level)


def conformal_quantile(scores: Tensor, level: float) -> Tensor:
    r"""The split conformal threshold of calibration ``scores`` ``(n, *S)`` at ``level``, ``(*S)``.

    The :math:`\lceil (n + 1)\,\text{level} \rceil`-th smallest score along the first
    dimension, separately for every trailing position (every node, for per-node scores);
    :math:`+\infty` when that rank exceeds :math:`n` (too few scores for the level).
    """
    level = _check_level(level)
    if scores.dim() < 1 or scores.shape[0] < 1:
        raise ValueError(f"need at least one calibration score, got shape {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("calibration scores contain NaN")
    n = scores.shape[0]
    rank = math.ceil((n + 1) * level - 1e-9)  # the guard keeps e.g. 20 * 0.9 at 18, not 19
    if rank > n:
        return torch.full(scores.shape[1:], math.inf, dtype=scores.dtype, device=scores.device)
    return scores.sort(dim=0).values[rank - 1]


def conformal_p_values(calibration: Tensor, scores: Tensor) -> Tensor:
    r"""Conformal p-values of ``scores`` ``(m, *S)`` against ``calibration`` ``(n, *S)``: ``(m, *S)``.

    .. math::

        p(s) = \frac{1 + \#\{i : s_i \ge s\}}{n + 1},

    per trailing position. When :math:`s` is exchangeable with the calibration scores (a
    *normal* row, if those were normal rows), :math:`P(p(s) \le a) \le a` for every
    :math:`a`: flagging :math:`p \le a` raises false alarms at rate :math:`a` at most. Without
    calibration scores every p-value is 1: nothing is flagged.
    """
    if calibration.dim() < 1:
        raise ValueError(f"calibration scores must be (n, *S), got shape {tuple(calibration.shape)}")
    if calibration.shape[1:] != scores.shape[1:]:
        raise ValueError(f"scores {tuple(scores.shape)} and calibration {tuple(calibration.shape)} must agree "
                         "after the first dimension")
    at_least = (calibration.unsqueeze(0) >= scores.unsqueeze(1)).sum(dim=1)
    return (1 + at_least).to(scores.dtype) / (calibration.shape[0] + 1)


class SplitConformal:
    r"""A split conformal threshold for a score: :math:`\{s \le \hat q\}` holds ``level`` of new data.

    Parameters
    ----------
    level : float
        Coverage :math:`a` in ``(0, 1)``.

    Attributes
    ----------
    threshold : Tensor
        :math:`\hat q` (:func:`conformal_quantile`), a scalar or one per trailing position
        (``(V,)`` for per-node scores); set by :meth:`fit`.
    calibration : Tensor
        The scores it was fitted on, ``(n, *S)``, for :meth:`p_values`.
    """

    def __init__(self, level: float = 0.9) -> None:
        self.level = _check_level(level)
        self.threshold: Tensor | None = None
        self.calibration: Tensor | None = None

    def fit(self, scores: Tensor) -> SplitConformal:
        """Calibrate on held-out ``scores`` ``(n, *S)``, exchangeable with the data to cover."""
        self.threshold = conformal_quantile(scores, self.level)
        self.calibration = scores.detach().clone()
        return self

    def _fitted(self) -> Tensor:
        if self.threshold is None:
            raise RuntimeError("SplitConformal is not calibrated: call fit(scores) first")
        return self.threshold

    def contains(self, scores: Tensor) -> Tensor:
        """Whether each score lies in the calibrated set, bool of ``scores``' shape."""
        return scores <= self._fitted()

    def p_values(self, scores: Tensor) -> Tensor:
        """:func:`conformal_p_values` of ``scores`` against the calibration scores."""
        self._fitted()
        return conformal_p_values(self.calibration, scores)

    def __repr__(self) -> str:
        fitted = "not fitted" if self.calibration is None else f"n={self.calibration.shape[0]}"
        return f"SplitConformal(level={self.level}, {fitted})"


@dataclass
class AdaptiveRun:
    """What :func:`adaptive_conformal` did at every step ``t`` of a sequence of ``T`` scores.

    Attributes
    ----------
    covered : Tensor
        ``(T,)`` bool: score ``t`` lay within the threshold in force at ``t``.
    thresholds : Tensor
        ``(T,)``: the threshold in force at ``t`` (``inf``: the whole space, ``-inf``: empty).
    levels : Tensor
        ``(T,)``: the level :math:`1 - a_t` the threshold was taken at.
    """

    covered: Tensor
    thresholds: Tensor
    levels: Tensor

    @property
    def coverage(self) -> float:
        """The long-run coverage: the share of steps covered."""
        return self.covered.double().mean().item()


def adaptive_conformal(
    calibration: Tensor, scores: Tensor, level: float, step: float = 0.05, window: int | None = None,
) -> AdaptiveRun:
    r"""Adaptive conformal inference (Gibbs and Candès 2021) over a sequence of ``scores`` ``(T,)``.

    At step :math:`t` the threshold is the conformal quantile (:func:`conformal_quantile`) at
    level :math:`1 - a_t` of the scores seen so far: the ``calibration`` scores ``(n,)``, then
    every earlier score of the sequence (the last ``window`` of them all, when given). After
    the step, with :math:`e_t = 1` if score :math:`t` was not covered,

    .. math::

        a_{t+1} = a_t + \gamma\,\big((1 - \text{level}) - e_t\big), \qquad a_1 = 1 - \text{level},

    so a run of misses widens the sets and a run of hits narrows them. For any sequence,
    :math:`\big|\tfrac1T \sum_t e_t - (1 - \text{level})\big| \le
    (\max(a_1, 1 - a_1) + \gamma) / (\gamma T)`: the long-run coverage converges to
    ``level`` without exchangeability (at :math:`a_t \le 0` the set is everything, at
    :math:`a_t \ge 1` empty). Scores must arrive in time order.

    Parameters
    ----------
    calibration : Tensor
        ``(n,)`` scores known before the sequence starts (held-out rows).
    scores : Tensor
        ``(T,)`` the sequence's scores, in order.
    level : float
        Target coverage in ``(0, 1)``.
    step : float
        :math:`\gamma > 0`: larger adapts faster, with more variable sets.
    window : int, optional
        Use only the ``window`` most recent scores for the quantile.

    Returns
    -------
    AdaptiveRun
    """
    level = _check_level(level)
    if not step > 0.0:
        raise ValueError(f"step must be positive, got {step}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if calibration.dim() != 1 or scores.dim() != 1:
        raise ValueError(f"calibration and scores must be 1-D, got {tuple(calibration.shape)} and "
                         f"{tuple(scores.shape)}")
    seen = calibration.detach().double().cpu().tolist()
    if window is not None:
        seen = seen[-window:]
    ordered = sorted(seen)
    # The window's scores in arrival order, to know which one leaves next (kept only with a window).
    recent = seen if window is not None else None
    target = 1.0 - level
    alpha = target
    covered, thresholds, levels = [], [], []
    for value in scores.detach().double().cpu().tolist():
        n, wanted = len(ordered), 1.0 - alpha
        if wanted <= 0.0:
            threshold = -math.inf
        elif n == 0 or wanted >= 1.0:
            threshold = math.inf
        else:
            rank = math.ceil((n + 1) * wanted - 1e-9)
            threshold = math.inf if rank > n else ordered[rank - 1]
        hit = value <= threshold
        covered.append(hit)
        thresholds.append(threshold)
        levels.append(wanted)
        alpha += step * (target - (0.0 if hit else 1.0))
        bisect.insort(ordered, value)
        if recent is not None:
            recent.append(value)
            if len(recent) > window:
                ordered.pop(bisect.bisect_left(ordered, recent.pop(0)))
    dtype = scores.dtype if scores.is_floating_point() else torch.float64
    return AdaptiveRun(torch.tensor(covered, dtype=torch.bool), torch.tensor(thresholds, dtype=dtype),
                       torch.tensor(levels, dtype=dtype))


# -- node labels -------------------------------------------------------------

LABEL_SET_METHODS = ("aps", "lac")


def _uniforms(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def _label_set_scores(proba: Tensor, method: str, noise: Tensor | None) -> Tensor:
    """The score every class would have as the true one, ``(*, K)``."""
    if method == "lac":
        return 1.0 - proba
    if method != "aps":
        raise ValueError(f"method must be one of {LABEL_SET_METHODS}, got {method!r}")
    # Mass of the classes strictly more probable than k, plus k's own (a uniform share of it
    # when randomized): the set grows by whole classes in order of probability.
    above = (proba.unsqueeze(-1) > proba.unsqueeze(-2)).to(proba.dtype)  # [j, k]: p_j > p_k
    mass_above = (proba.unsqueeze(-1) * above).sum(dim=-2)
    own = proba if noise is None else noise.unsqueeze(-1) * proba
    return mass_above + own


def label_scores(
    proba: Tensor, labels: Tensor, method: str = "aps", randomized: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conformal scores of the true ``labels`` ``(*,)`` under class probabilities ``proba`` ``(*, K)``: ``(*,)``.

    ``"aps"``: the probability mass of the classes ranked above the true one plus the true
    one's (times a uniform draw when ``randomized``, which makes coverage exact rather than
    conservative); ``"lac"``: one minus the true class's probability. Calibrate them with
    :class:`SplitConformal` (per node: scores ``(n, V)``) and build sets with :func:`label_sets`.
    """
    noise = _uniforms(labels.shape, proba, generator) if method == "aps" and randomized else None
    every = _label_set_scores(proba, method, noise)
    return every.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def label_sets(
    proba: Tensor, threshold: Tensor | float, method: str = "aps", randomized: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conformal label sets ``(*, K)`` bool: the classes whose score is at most ``threshold``.

    ``threshold`` is a calibrated :attr:`SplitConformal.threshold` (a scalar, or ``(V,)`` per
    node for ``proba`` ``(N, V, K)``); ``method`` and ``randomized`` as in :func:`label_scores`.
    A randomized APS set may be empty (the draw falls below the top class's share).
    """
    noise = _uniforms(proba.shape[:-1], proba, generator) if method == "aps" and randomized else None
    threshold = torch.as_tensor(threshold, dtype=proba.dtype, device=proba.device)
    return _label_set_scores(proba, method, noise) <= threshold.unsqueeze(-1)


# -- real-valued targets --------------------------------------------------------

def interval_scores(targets: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    r"""How many half-widths every target lies from its interval's centre, of the targets' shape.

    .. math::

        s = \frac{|y - c|}{w}, \qquad c = \frac{\text{lower} + \text{upper}}{2}, \quad
        w = \frac{\text{upper} - \text{lower}}{2},

    so an interval holds its target exactly when :math:`s \le 1`, and the intervals scaled about
    their centres by a calibrated threshold :math:`\hat q` (:func:`conformal_quantile` of these
    scores, per node for ``(n, V)`` targets; :func:`scale_intervals`) hold ``level`` of new
    targets. A zero-width interval scores ``inf`` unless it holds its target.
    """
    if not (targets.shape == lower.shape == upper.shape):
        raise ValueError(f"targets {tuple(targets.shape)}, lower {tuple(lower.shape)} and upper "
                         f"{tuple(upper.shape)} must have one shape")
    half = (upper - lower) / 2
    distance = (targets - (lower + upper) / 2).abs()
    return torch.where(distance == 0, torch.zeros_like(distance), distance / half)


def scale_intervals(lower: Tensor, upper: Tensor, factor: Tensor | float) -> tuple[Tensor, Tensor]:
    """The intervals scaled about their centres by ``factor``, a calibrated :func:`interval_scores`
    threshold broadcast against them (``(V,)`` per node, ``(V, q)`` per node coordinate); ``inf``
    widens them to the real line, ``-inf`` (an adaptive threshold's empty set) leaves them empty."""
    factor = torch.as_tensor(factor, dtype=lower.dtype, device=lower.device)
    centre, half = (lower + upper) / 2, (upper - lower) / 2
    factor, half = torch.broadcast_tensors(factor, half)
    # inf * 0 would be NaN: an infinite factor leaves no finite bound, whatever the width.
    reach = torch.where(torch.isinf(factor), factor, factor * half)
    return centre - reach, centre + reach


# -- scores of a flow model -----------------------------------------------------


def latent_distance(model: FlowModel, graph: GraphLike, x: Any, y: Any) -> Tensor:
    r"""The whitened distance of :math:`F(X)` from its latent law given ``y``, ``(N,)``
    (:meth:`~dgl_iflow.models.base.FlowModel.whitened_distance`).

    The raw level-:math:`a` set of :meth:`~dgl_iflow.models.base.FlowModel.uncertainty_set` is
    this score :math:`\le \sqrt{\chi^2_{V d}{}^{-1}(a)}`, so a calibrated threshold is a
    calibrated radius (its ``radius`` argument draws the set).
    """
    return model.whitened_distance(graph, x, y)


def negative_log_likelihood(model: FlowModel, graph: GraphLike, x: Any, y: Any) -> Tensor:
    r""":math:`-\log p(X \mid Y)` per sample, ``(N,)``: the density's own level sets."""
    with torch.no_grad():
        return -model.log_prob(graph, x, y)


#: Nonconformity scores of a sample ``x`` with labels ``y`` under a flow model: name -> function
#: ``(model, graph, x, y) -> (N,)``, larger meaning less typical.
SCORES: dict[str, Callable[..., Tensor]] = {"distance": latent_distance, "nll": negative_log_likelihood}


def flow_scores(model: FlowModel, graph: GraphLike, x: Any, y: Any, score: str = "distance") -> Tensor:
    """The :data:`SCORES` entry ``score`` of every sample, ``(N,)``."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {sorted(SCORES)}, got {score!r}")
    return SCORES[score](model, graph, x, y)


def node_anomaly_scores(model: FlowModel, graph: GraphLike, x: Any, normal: int = 0) -> Tensor:
    r"""How far every node's latent lies from the law of a node labelled ``normal``, ``(N, V)``.

    :meth:`~dgl_iflow.models.base.FlowModel.node_whitened_distance` with every node given label
    ``normal``. Turn into p-values with :func:`conformal_p_values` against normal calibration
    nodes.
    """
    x = model.as_features(x)
    return model.node_whitened_distance(graph, x, torch.full(x.shape[:2], normal, dtype=torch.long))
