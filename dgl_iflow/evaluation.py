r"""Uncertainty on held-out data: what ``dgl-iflow evaluate`` and ``benchmarks/uncertainty.py`` report.

:func:`uncertainty_report` splits the test rows, in their order, into a calibration part (the
first ``calibration_fraction``) and an evaluation part (the rest), and measures on the
evaluation part:

- **sets for X | Y** (:mod:`dgl_iflow.conformal`, score: the whitened latent distance): the
  model's raw set (radius :math:`\sqrt{\chi^2_{Vd}{}^{-1}(a)}`), the split conformal set
  calibrated on the calibration part, and adaptive conformal inference run through the
  evaluation rows in order, starting from the calibration scores; coverage and latent radius
  of each at every level, and the coverage at a grid of levels for the reliability diagram;
- **node labels**, from the flow's :meth:`~dgl_iflow.models.base.FlowModel.predict_proba` and,
  beside it, per-node logistic regression on all features fitted to the training rows
  (:class:`~dgl_iflow.baselines.NodeLogistic`): accuracy, expected calibration error, and
  per-node conformal label sets (randomized APS) with their coverage and mean size;
- **anomalies** (label 0 normal, any other label an anomaly): conformal p-values against the
  normal calibration rows (per sample) or nodes (per node), flagged at :math:`p \le \alpha`,
  with the false-alarm rate on normal evaluation rows, precision and recall. Flow scores: the
  latent distance under the all-normal label vector, and the flow's posterior probability of an
  anomaly; logistic regression's: its probability of an anomaly.

Time series (traffic, solar) are not exchangeable: there the split conformal guarantee does not
hold and the adaptive sets are the ones to trust; on exchangeable data both hold their level.

:func:`target_report` does the same for a model of real-valued targets: generation given every
test row's own targets against the real rows, prediction against ridge regression, and the
intervals of :meth:`~dgl_iflow.models.base.FlowModel.predict_interval` (own, split conformal,
adaptive) on the evaluation part.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import metrics
from .baselines import NodeLogistic, NodeRidge, TargetGaussian
from .conformal import (adaptive_conformal, conformal_p_values, conformal_quantile, interval_scores, label_scores,
                        label_sets, scale_intervals)
from .graphs import GraphLike
from .latents import LatentLaw
from .latents.gaussian import central_interval
from .models.base import FlowModel

#: Levels reported in tables.
LEVELS = (0.5, 0.9, 0.95)
#: The level of :func:`target_report`'s figure intervals, one of :data:`LEVELS`.
FIGURE_LEVEL = 0.9
#: Levels of the reliability diagram.
GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: False-alarm levels at which anomalies are flagged.
ALARM_LEVELS = (0.05, 0.1)


def split_for_calibration(n: int, calibration_fraction: float) -> int:
    """Rows in the calibration part of ``n`` test rows: at least 1, leaving at least 1."""
    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must lie in (0, 1), got {calibration_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 test rows to calibrate and evaluate, got {n}")
    return min(max(1, round(n * calibration_fraction)), n - 1)


def _set_coverage(latent: LatentLaw, s_cal: Tensor, s_ev: Tensor, step: float
                  ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Coverage and radii of the three sets at :data:`LEVELS` and, for the diagram, at every :data:`GRID` level,
    from the whitened distances of the calibration (``s_cal``) and scored (``s_ev``) rows."""
    def coverages(level: float) -> dict[str, float]:
        raw_radius = latent.confidence_radius(level, latent.num_nodes)
        split_radius = conformal_quantile(s_cal, level).item()
        adaptive = adaptive_conformal(s_cal, s_ev, level, step=step)
        finite = adaptive.thresholds[adaptive.thresholds.isfinite()]
        return dict(raw=(s_ev <= raw_radius).double().mean().item(), split=(s_ev <= split_radius).double().mean().item(),
                    adaptive=adaptive.coverage, raw_radius=raw_radius, split_radius=split_radius,
                    adaptive_median_radius=finite.median().item() if len(finite) else math.inf)

    found = {level: coverages(level) for level in sorted({*GRID, *LEVELS})}
    curves = {kind: [found[level][kind] for level in GRID] for kind in ("raw", "split", "adaptive")}
    return {str(level): found[level] for level in LEVELS}, dict(levels=list(GRID), **curves)


def _label_results(proba_cal: Tensor, y_cal: Tensor, proba_ev: Tensor, y_ev: Tensor, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    sets = {}
    for level in LEVELS:
        threshold = conformal_quantile(label_scores(proba_cal, y_cal, "aps", generator=gen), level)
        chosen = label_sets(proba_ev, threshold, "aps", generator=gen)
        sets[str(level)] = dict(coverage=chosen.gather(-1, y_ev.unsqueeze(-1)).double().mean().item(),
                                mean_size=chosen.double().sum(-1).mean().item())
    return dict(accuracy=metrics.node_accuracy(proba_ev, y_ev), calibration_error=metrics.calibration_error(proba_ev, y_ev),
                log_loss=metrics.node_log_loss(proba_ev, y_ev), sets=sets)


def _p_values(cal_scores: Tensor, cal_normal: Tensor, scores: Tensor) -> Tensor:
    """p-values of ``scores`` against the normal calibration scores, per column (node) when 2-D."""
    if scores.dim() == 1:
        return conformal_p_values(cal_scores[cal_normal], scores)
    return torch.stack([conformal_p_values(cal_scores[cal_normal[:, v], v], scores[:, v])
                        for v in range(scores.shape[1])], dim=1)


def _anomaly_results(scores_cal: dict[str, Tensor], y_cal: Tensor, scores_ev: dict[str, Tensor], y_ev: Tensor,
                     per_node: bool) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Per scorer, what flagging p <= alpha gives at :data:`ALARM_LEVELS`, and the false-alarm rate at every :data:`GRID` level."""
    normal_cal = (y_cal == 0) if per_node else (y_cal == 0).all(dim=1)
    positive = (y_ev != 0) if per_node else (y_ev != 0).any(dim=1)
    if not normal_cal.any():
        return {}, {}
    results, curves = {}, {}
    for name in scores_cal:
        p = _p_values(scores_cal[name], normal_cal, scores_ev[name])
        results[name] = {str(alpha): metrics.precision_recall(p <= alpha, positive) for alpha in ALARM_LEVELS}
        normal = p[~positive]
        curves[name] = [(normal <= alpha).double().mean().item() if len(normal) else math.nan for alpha in GRID]
    return results, curves


def _anomaly_scores(latent: LatentLaw, h: Tensor, proba: Tensor, logistic: Tensor) -> tuple[dict, dict]:
    normal = torch.zeros(h.shape[:2], dtype=torch.long, device=h.device)
    per_sample = {"flow, latent distance": latent.whitened_distance(h, normal).double().cpu(),
                  "flow, P(anomaly)": 1.0 - proba[..., 0].prod(dim=-1),
                  "logistic, P(anomaly)": 1.0 - logistic[..., 0].prod(dim=-1)}
    per_node = {"flow, latent distance": latent.node_whitened_distance(h, normal).double().cpu(),
                "flow, P(anomaly)": 1.0 - proba[..., 0], "logistic, P(anomaly)": 1.0 - logistic[..., 0]}
    return per_sample, per_node


@torch.no_grad()
def uncertainty_report(
    model: FlowModel, graph: GraphLike, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
    calibration_fraction: float = 0.3, step: float = 0.05, seed: int = 0,
) -> dict[str, Any]:
    r"""Coverage, set sizes, calibration, label sets and anomaly p-values on held-out rows (module docstring).

    Parameters
    ----------
    model : FlowModel
        A trained conditional model.
    graph : GraphLike
        Its graph.
    x_train, y_train : Tensor
        ``(n, V, d)`` and ``(n, V)`` rows logistic regression is fitted to.
    x_test, y_test : Tensor
        ``(m, V, d)`` and ``(m, V)`` held-out rows, in time order for a time series.
    calibration_fraction : float
        Share of the test rows, from the start, that calibrates.
    step : float
        :func:`~dgl_iflow.conformal.adaptive_conformal`'s step.
    seed : int
        Seeds the randomized label sets.

    Returns
    -------
    dict
        ``protocol``, ``sets`` (per level: ``raw`` / ``split`` / ``adaptive`` coverage and
        radii), ``labels`` (``flow`` and ``logistic``), ``anomalies`` (``per_sample`` and
        ``per_node``, per scorer and false-alarm level), and ``curves`` (the reliability
        diagram's data: set coverage over :data:`GRID`, both predictors'
        :class:`~dgl_iflow.metrics.ReliabilityBins` as lists, and every scorer's per-node
        false-alarm rate on normal nodes when flagging :math:`p \le \alpha` for
        :math:`\alpha` in :data:`GRID`).
    """
    latent = model._class_latent("uncertainty_report")
    x_test, y_test = model.as_features(x_test), model.as_labels(y_test)
    cut = split_for_calibration(len(x_test), calibration_fraction)
    h, y_test = model._labelled_latents(graph, x_test, y_test)  # every score below reads these latents
    distance = latent.whitened_distance(h, y_test).double().cpu()
    sets, set_curves = _set_coverage(latent, distance[:cut], distance[cut:], step)

    proba = model.proba_of_latents(x_test, h).double().cpu()
    logistic = NodeLogistic(model.as_features(x_train).cpu(), model.as_labels(y_train).cpu(), features="all",
                            num_classes=model.num_classes).predict_proba(x_test.cpu())
    y_cpu = y_test.cpu()
    labels = {name: _label_results(p[:cut], y_cpu[:cut], p[cut:], y_cpu[cut:], seed)
              for name, p in (("flow", proba), ("logistic", logistic))}

    per_sample, per_node = _anomaly_scores(latent, h, proba, logistic)
    anomalies, alarm_curves = {}, {}
    for unit, scores in (("per_sample", per_sample), ("per_node", per_node)):
        anomalies[unit], alarm_curves[unit] = _anomaly_results(
            {k: v[:cut] for k, v in scores.items()}, y_cpu[:cut], {k: v[cut:] for k, v in scores.items()}, y_cpu[cut:],
            per_node=unit == "per_node")

    def bins(p: Tensor) -> dict[str, list[float]]:
        table = metrics.reliability_bins(p[cut:], y_cpu[cut:])
        return dict(confidence=_listed(table.confidence), accuracy=_listed(table.accuracy), count=table.count.tolist())

    return dict(
        protocol=dict(calibration_rows=cut, evaluation_rows=len(x_test) - cut, adaptive_step=step,
                      score="whitened latent distance", label_sets="randomized APS, calibrated per node"),
        sets=sets, labels=labels, anomalies=anomalies,
        curves=dict(sets=set_curves, probabilities={"flow": bins(proba), "logistic": bins(logistic)},
                    alarms=dict(levels=list(GRID), **alarm_curves["per_node"])),
    )


def _interval_coverage(y: Tensor, lower: Tensor, upper: Tensor) -> tuple[float, float]:
    """The share of targets inside their intervals and the intervals' mean width."""
    return float(((y >= lower) & (y <= upper)).double().mean()), float((upper - lower).double().mean())


@torch.no_grad()
def target_report(
    model: FlowModel, graph: GraphLike, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
    calibration_fraction: float = 0.3, step: float = 0.05, seed: int = 0,
) -> dict[str, Any]:
    r"""Generation, prediction and intervals of a model of real-valued targets on held-out rows.

    - ``generation``: one row generated per test row, given that row's own targets (a latent
      drawn from the law, then :math:`F^{-1}`), against the test rows
      (:func:`~dgl_iflow.metrics.generation_scores`), and the test NLL per sample; beside them the Gaussian with a
      mean linear in the targets (:class:`~dgl_iflow.baselines.TargetGaussian`) fitted to the
      training rows.
    - ``prediction``: the test RMSE of :meth:`~dgl_iflow.models.base.FlowModel.predict`, of
      ridge regression on all features (:meth:`~dgl_iflow.baselines.NodeRidge.cross_validated`)
      and of the training mean.
    - ``intervals``: on the test rows after the first ``calibration_fraction`` (the calibration
      part), per level of :data:`LEVELS`, the coverage and mean width of the model's own
      intervals, of their split conformal scaling per node calibrated on the calibration part,
      and of adaptive conformal inference per node (:func:`~dgl_iflow.conformal.adaptive_conformal`
      on :func:`~dgl_iflow.conformal.interval_scores`, in row order), whose coverage holds on a
      time series too (its widths vary: their median). A width is ``inf`` where too few
      calibration rows leave an interval unbounded (``None`` once written as JSON).

    Parameters
    ----------
    model : FlowModel
        A trained model of real-valued targets.
    graph : GraphLike
        Its graph.
    x_train, y_train : Tensor
        ``(n, V, d)`` and ``(n, V[, q])`` training rows, for the baselines.
    x_test, y_test : Tensor
        ``(m, V, d)`` and ``(m, V[, q])`` held-out rows, in time order for a time series.
    calibration_fraction, step : float
        As in :func:`uncertainty_report`.
    seed : int
        Seeds the generated rows.

    Returns
    -------
    dict
        ``protocol``, ``generation``, ``prediction``, ``intervals``, and ``figure`` (the test
        targets, predictions and split conformal intervals at :data:`FIGURE_LEVEL` of the
        evaluation part, and the generated rows, as tensors, for
        :func:`~dgl_iflow.plots.predicted_vs_true` and :func:`~dgl_iflow.plots.target_sweep`).
    """
    if not model.continuous:
        raise ValueError("target_report is for a model of real-valued targets; use uncertainty_report for classes")
    x_train, y_train = model.as_features(x_train, "x_train"), model.as_labels(y_train, "y_train")
    x_test, y_test = model.as_features(x_test, "x_test"), model.as_labels(y_test, "y_test")
    model.check_features(graph, x_test, "x_test")
    model.check_labels(x_test, y_test, "y_test")
    cut = split_for_calibration(len(x_test), calibration_fraction)

    generator = torch.Generator(device=model.device).manual_seed(seed)
    generated = model.generate(graph, model.latent.sample(y_test, generator=generator))
    gaussian = TargetGaussian(x_train.cpu(), y_train.cpu(), seed=seed)
    gaussian_rows = torch.cat([gaussian.generate(y, 1) for y in y_test.cpu()])
    generation = dict(
        flow=dict(**metrics.generation_scores(x_test.cpu(), generated.cpu()),
                  nll=float(-model.log_prob(graph, x_test, y_test).mean())),
        target_gaussian=dict(**metrics.generation_scores(x_test.cpu(), gaussian_rows),
                             nll=float(-gaussian.log_prob(x_test.cpu(), y_test.cpu()).mean())),
    )

    ridge = NodeRidge.cross_validated(x_train.cpu(), y_train.cpu())
    prediction, std = (part.cpu() for part in model.predict_distribution(graph, x_test))
    predictions = dict(flow=metrics.rmse(prediction, y_test), ridge=metrics.rmse(ridge.predict(x_test.cpu()), y_test),
                       ridge_l2=ridge.l2, training_mean=metrics.rmse(y_train.mean(0).expand_as(y_test), y_test))

    intervals, calibrated = {}, {}
    y_ev = y_test[cut:].cpu()
    for level in LEVELS:
        lower, upper = central_interval(prediction, std, level)  # predict_interval's own intervals
        scores = interval_scores(y_test.cpu(), lower, upper)
        calibrated[level] = split = scale_intervals(lower[cut:], upper[cut:], conformal_quantile(scores[:cut], level))
        # One sequence per node coordinate, each calibrated on its own scores.
        flat_cal, flat_ev = scores[:cut].flatten(1), scores[cut:].flatten(1)
        runs = [adaptive_conformal(flat_cal[:, j], flat_ev[:, j], level, step=step) for j in range(flat_ev.shape[1])]
        adaptive_factor = torch.stack([run.thresholds for run in runs], dim=1).reshape(y_ev.shape)
        # An empty set (threshold -inf) has width 0; the whole line (inf) counts as inf.
        adaptive_widths = torch.where(adaptive_factor == -math.inf, torch.zeros_like(adaptive_factor),
                                      adaptive_factor * (upper[cut:] - lower[cut:]))
        own_coverage, own_width = _interval_coverage(y_ev, lower[cut:], upper[cut:])
        split_coverage, split_width = _interval_coverage(y_ev, *split)
        intervals[str(level)] = dict(
            own=own_coverage, own_width=own_width, split=split_coverage, split_width=split_width,
            adaptive=float(torch.stack([run.covered for run in runs]).double().mean()),
            adaptive_median_width=float(adaptive_widths.median()),
        )
    figure = dict(targets=y_ev, prediction=prediction[cut:], lower=calibrated[FIGURE_LEVEL][0],
                  upper=calibrated[FIGURE_LEVEL][1], generated=generated.cpu())
    return dict(
        protocol=dict(calibration_rows=cut, evaluation_rows=len(x_test) - cut, adaptive_step=step,
                      intervals="split and adaptive conformal scaling of the model's own intervals, per node"),
        generation=generation, prediction=predictions, intervals=intervals, figure=figure,
    )


def _listed(values: np.ndarray) -> list[float | None]:
    """JSON-safe: empty bins (NaN) become ``None``."""
    return [None if math.isnan(v) else float(v) for v in values]
