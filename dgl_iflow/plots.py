"""Figures for evaluating conditional graph generation: samples, node predictions, training curves.

Every function takes plain tensors, arrays or dicts (no models), writes one PNG and returns its
path. Figures are drawn on matplotlib's Agg canvas directly, without ``pyplot``, so no global
backend is switched and no figure stays open; matplotlib is imported on first use, which keeps
``import dgl_iflow`` fast.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["convergence", "generated_vs_real", "jko_movements", "node_probabilities", "training_curves"]

ArrayLike = torch.Tensor | np.ndarray
LabelKey = tuple[int, ...]

REAL_COLOUR = "#1f4e9c"  # dark blue
GENERATED_COLOUR = "#e8710a"  # orange: distinct from blue also for colour-blind readers
DPI = 120


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI, format="png")
    return out


def _numpy(a: ArrayLike) -> np.ndarray:
    return torch.as_tensor(a).detach().cpu().to(torch.float64).numpy()


def _label_text(key: Sequence[int]) -> str:
    return "Y = " + "".join(str(int(v)) for v in key)


def generated_vs_real(real: Mapping[LabelKey, ArrayLike], generated: Mapping[LabelKey, ArrayLike],
                      path: str | os.PathLike, feature_names: Sequence[str] = ("x_0", "x_1"),
                      max_samples: int = 40, title: str | None = None) -> Path:
    """Real and generated graphs of each label vector in the (feature 0, feature 1) plane.

    One panel per label vector: every node of every sample is a point, the nodes of one sample
    (in node order) are joined by a light line, real samples in blue, generated in orange. All
    panels share their axes.

    Parameters
    ----------
    real : mapping of tuple to array_like
        ``{Y: (n_Y, V, 2)}`` real node features per label vector ``Y`` (a tuple of V ints).
    generated : mapping of tuple to array_like
        ``{Y: (m_Y, V, 2)}`` generated features for the same label vectors.
    path : str or PathLike
        PNG file to write.
    feature_names : sequence of str
        Axis labels of the two features.
    max_samples : int
        At most this many samples of each kind per panel (the first ones), so the lines stay
        readable.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    if not real:
        raise ValueError("real must hold at least one label vector")
    if set(real) != set(generated):
        raise ValueError(f"real and generated must have the same label vectors, got "
                         f"{sorted(real)} and {sorted(generated)}")
    if len(feature_names) != 2:
        raise ValueError(f"need 2 feature names, got {list(feature_names)}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    panels = []
    for key in real:
        pair = [_numpy(real[key]), _numpy(generated[key])]
        for kind, rows in zip(("real", "generated"), pair):
            if rows.ndim != 3 or rows.shape[1] != len(key) or rows.shape[2] != 2:
                raise ValueError(f"{kind} samples of {_label_text(key)} must have shape "
                                 f"(n, {len(key)}, 2), got {rows.shape}")
        panels.append((key, [rows[:max_samples] for rows in pair], [len(rows) for rows in pair]))

    columns = min(len(panels), 3)
    rows_count = math.ceil(len(panels) / columns)
    figure = _figure(4.6 * columns, 4.3 * rows_count + 0.4)
    axes = figure.subplots(rows_count, columns, sharex=True, sharey=True, squeeze=False).ravel()
    for axis, (key, (real_rows, fake_rows), (n_real, n_fake)) in zip(axes, panels):
        for rows, colour, kind, total in ((real_rows, REAL_COLOUR, "real", n_real),
                                          (fake_rows, GENERATED_COLOUR, "generated", n_fake)):
            for sample in rows:
                axis.plot(sample[:, 0], sample[:, 1], color=colour, alpha=0.12, linewidth=0.7)
            points = rows.reshape(-1, 2)
            axis.scatter(points[:, 0], points[:, 1], s=7, color=colour, alpha=0.55,
                         linewidths=0, label=f"{kind} ({len(rows)} of {total})")
        axis.set_title(_label_text(key), fontsize=9, family="monospace")
        axis.set_xlabel(feature_names[0])
        axis.set_ylabel(feature_names[1])
        axis.grid(alpha=0.25)
        axis.legend(fontsize=8, loc="best", markerscale=2)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def node_probabilities(proba: ArrayLike, labels: ArrayLike, path: str | os.PathLike,
                       node_names: Sequence[str] | None = None, max_samples: int = 40,
                       positive: int = 1, title: str | None = None) -> Path:
    """Heatmap of predicted ``P(Y_v = positive | X)``, nodes (rows) by samples, true labels marked.

    Cells are coloured from 0 (white) to 1 (dark); a dot marks every node whose true label is
    ``positive``, so a dot on a pale cell is a missed event and a dark cell without a dot a
    false alarm.

    Parameters
    ----------
    proba : array_like
        ``(n, V, K)`` class probabilities, sample-first, as ``IGNN.predict_proba`` returns.
    labels : array_like
        ``(n, V)`` true labels, as the data sets give them.
    path : str or PathLike
        PNG file to write.
    node_names : sequence of str, optional
        V row labels; default the node ids.
    max_samples : int
        Only the first ``max_samples`` samples are drawn.
    positive : int
        The class whose probability is drawn.
    title : str, optional
        Figure title; default says how many samples and the accuracy over the drawn ones.

    Returns
    -------
    Path
        ``path``.
    """
    p, y = _numpy(proba), torch.as_tensor(labels).detach().cpu().long().numpy()
    if p.ndim != 3 or y.shape != p.shape[:2]:
        raise ValueError(f"expected proba (n, V, K) and labels (n, V), got {p.shape} and "
                         f"{y.shape}")
    if not 0 <= positive < p.shape[2]:
        raise ValueError(f"positive must lie in [0, {p.shape[2]}), got {positive}")
    if node_names is not None and len(node_names) != p.shape[1]:
        raise ValueError(f"{len(node_names)} node names for V = {p.shape[1]} nodes")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    p, y = p[:max_samples], y[:max_samples]
    num_samples, num_nodes = y.shape
    names = list(node_names) if node_names is not None else [str(v) for v in range(num_nodes)]

    figure = _figure(min(2.0 + 0.28 * num_samples, 16.0), 1.2 + 0.3 * num_nodes)
    axis = figure.subplots()
    # The image has one row per node: (n, V) -> (V, n).
    image = axis.imshow(p[:, :, positive].T, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                        interpolation="nearest")
    samples, nodes = np.nonzero(y == positive)
    axis.scatter(samples, nodes, s=14, color=GENERATED_COLOUR, edgecolors="black",
                 linewidths=0.4)
    axis.set_yticks(range(num_nodes), names, fontsize=8)
    axis.set_xlabel(f"test sample    (orange dot: true label {positive})")
    axis.set_ylabel("node")
    figure.colorbar(image, ax=axis, label=f"P(Y_v = {positive} | X)", shrink=0.9)
    accuracy = float((p.argmax(axis=2) == y).mean())
    axis.set_title(title or f"predicted P(Y_v = {positive} | X), first {num_samples} test "
                            f"samples (accuracy {accuracy:.3f})", fontsize=10)
    return _save(figure, path)


def training_curves(epochs: Sequence[Mapping[str, float]], path: str | os.PathLike,
                    keys: Sequence[str] = ("loss", "nll", "ce", "transport", "inversion_error"),
                    title: str | None = None) -> Path:
    """Per-epoch training curves, one panel per key; the inversion error on a log scale.

    Parameters
    ----------
    epochs : sequence of mapping
        One dict per epoch, as ``TrainHistory.epochs``.
    path : str or PathLike
        PNG file to write.
    keys : sequence of str
        Quantities to draw; those absent from every epoch are skipped.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    if not epochs:
        raise ValueError("epochs is empty: nothing to plot")
    present = [key for key in keys if any(key in epoch for epoch in epochs)]
    if not present:
        raise ValueError(f"none of {list(keys)} occurs in the history; its keys are "
                         f"{sorted(set().union(*epochs))}")
    from matplotlib.ticker import MaxNLocator

    columns = min(len(present), 3)
    rows_count = math.ceil(len(present) / columns)
    figure = _figure(4.0 * columns, 3.0 * rows_count + 0.3)
    axes = figure.subplots(rows_count, columns, squeeze=False).ravel()
    for axis, key in zip(axes, present):
        points = [(number, float(epoch[key])) for number, epoch in enumerate(epochs, start=1)
                  if key in epoch]
        x, y = zip(*points)
        axis.plot(x, y, marker="o", markersize=3, color=REAL_COLOUR)
        if key == "inversion_error":
            axis.set_yscale("log")
        axis.set_title(key, fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in axes[len(present):]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def jko_movements(history, path: str | os.PathLike, generated: ArrayLike | None = None,
                  real: ArrayLike | None = None, title: str | None = None) -> Path:
    r"""Per-block movement :math:`a_k = (\mathbb{E}\|x(t_{k+1}) - x(t_k)\|^2)^{1/2}` of every stage of a
    JKO-iFlow run against time, and beside it generated against real samples.

    Each stage (the first pass, every re-spacing and refinement) is one step curve over its time
    grid, so the panel shows how re-spacing evens the movement out; a stage that validation
    rolled back is dashed.

    Parameters
    ----------
    history : JKOHistory
        From :func:`~dgl_iflow.fit_jko`.
    path : str or PathLike
        PNG file to write.
    generated, real : array_like, optional
        ``(n, ..., 2)`` or ``(n, 2)`` samples; the first two coordinates of each row are drawn.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    stages = history.stages()
    if not stages:
        raise ValueError("history has no blocks: nothing to plot")
    rejected = {decision.stage for decision in history.decisions if not decision.kept}
    samples = generated is not None and real is not None
    figure = _figure(9.0 if samples else 5.0, 3.6)
    axes = figure.subplots(1, 2 if samples else 1, squeeze=False).ravel()
    for stage in stages:
        records = history.stage(stage)
        edges = [records[0].t0, *(record.t1 for record in records)]
        movements = history.movements(stage)
        axes[0].stairs(movements, edges, baseline=None, label=stage + (" (rolled back)" if stage in rejected else ""),
                       linestyle="--" if stage in rejected else "-", linewidth=1.6)
    axes[0].set_xlabel("time t")
    axes[0].set_ylabel("movement of the block a_k")
    axes[0].set_title("W2 movement per block", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    if samples:
        for values, colour, name in ((real, REAL_COLOUR, "real"), (generated, GENERATED_COLOUR, "generated")):
            flat = _numpy(values).reshape(len(values), -1)
            axes[1].scatter(flat[:, 0], flat[:, 1], s=4, alpha=0.5, color=colour, label=name)
        axes[1].set_xlabel("feature 0")
        axes[1].set_ylabel("feature 1")
        axes[1].set_title("samples", fontsize=10)
        axes[1].legend(fontsize=8, markerscale=3)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def convergence(runs: Mapping[str, Sequence[Sequence[tuple[float, float, float]]]], path: str | os.PathLike,
                ylabel: str = "test NLL", title: str | None = None) -> Path:
    """A quality measure against mini-batches and against training wall time, per model and run.

    Parameters
    ----------
    runs : mapping
        Model name to its runs (one per seed); a run is a sequence of
        ``(mini-batches, seconds, value)`` points in training order. One colour per model,
        one line per run.
    path : str or PathLike
        PNG file to write.
    ylabel : str
        What the value is.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    if not any(len(run) for model_runs in runs.values() for run in model_runs):
        raise ValueError("runs hold no points: nothing to plot")
    colours = [REAL_COLOUR, GENERATED_COLOUR, "#2a9d3f", "#8e44ad"]
    figure = _figure(9.0, 3.6)
    axes = figure.subplots(1, 2, squeeze=False).ravel()
    for (name, model_runs), colour in zip(runs.items(), colours * len(runs)):
        for number, run in enumerate(model_runs):
            if not run:
                continue
            minibatches, seconds, values = (np.asarray(column, dtype=float) for column in zip(*run))
            label = name if number == 0 else None
            axes[0].plot(minibatches, values, marker="o", markersize=2.5, color=colour, alpha=0.8, label=label)
            axes[1].plot(seconds, values, marker="o", markersize=2.5, color=colour, alpha=0.8, label=label)
    for axis, xlabel in zip(axes, ("mini-batches", "training wall time (s)")):
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)
