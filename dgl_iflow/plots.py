"""Figures for evaluating conditional graph generation: samples, node predictions, training curves.

Every function takes plain tensors, arrays or dicts (no models), writes one PNG and returns its
path. Figures are drawn on matplotlib's Agg canvas directly, without ``pyplot``, so no global
backend is switched and no figure stays open; matplotlib is imported on first use, which keeps
``import dgl_iflow`` fast.

The figures follow one style, meant to be read on paper as well as on screen: colours from a
colour-blind-safe palette, each paired with its own marker, so groups stay apart also in grey;
real data in grey behind generated data in colour; every axis labelled, with units where the
quantity has them; legends (keys) outside the axes, below the panels, so they never cover data.
"""
from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .training import TrainHistory

__all__ = ["convergence", "generated_samples", "generated_vs_real", "index_groups", "jko_movements",
           "node_probabilities", "predicted_vs_true", "target_sweep", "training_curves"]

ArrayLike = torch.Tensor | np.ndarray
LabelKey = tuple[int, ...]

#: Okabe & Ito's colour-blind-safe colours (yellow left out: it vanishes on white), in the order
#: node groups, models and stages take them.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
#: One marker per colour, so that groups differ in shape too (in grey print, for colour-blind readers).
MARKERS = ("o", "^", "s", "D", "v", "P", "X")
#: Real data drawn as a reference behind generated data.
REAL_GREY = "#9a9a9a"
REAL_COLOUR = PALETTE[0]
GENERATED_COLOUR = PALETTE[1]
#: The unit of the data sets' features: ``load_dataset`` standardizes them per node on the
#: training split, and models generate in those units.
STANDARDIZED = "standardized units"
DPI = 120


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    from .files import save_figure

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Atomically: an interrupted run leaves the old figure or the new one, never half a PNG.
    save_figure(figure, out, dpi=DPI)  # in the format the suffix names
    return out


def _numpy(a: ArrayLike) -> np.ndarray:
    return torch.as_tensor(a).detach().cpu().to(torch.float64).numpy()


def _label_text(key: Sequence[int]) -> str:
    return "Y = " + "".join(str(int(v)) for v in key)


def _with_units(name: str, units: str | None) -> str:
    return f"{name} ({units})" if units else name


def _style(index: int) -> tuple[str, str]:
    """Colour and marker of the ``index``-th group; past the palette, colours repeat with new markers."""
    return PALETTE[index % len(PALETTE)], MARKERS[(index + index // len(PALETTE)) % len(MARKERS)]


def _key_entry(colour: str, marker: str | None = None, label: str = "", linestyle: str = "none",
               size: float = 6.0) -> Artist:
    """A legend handle that does not depend on any plotted artist's size or transparency."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, marker=marker, linestyle=linestyle, markersize=size, label=label)


def _key_below(figure: Figure, handles: Sequence[Artist], columns: int | None = None) -> None:
    """The figure's key, outside and below every panel (constrained layout makes room for it)."""
    figure.legend(handles=list(handles), loc="outside lower center", ncols=columns or min(len(handles), 5),
                  fontsize=8, frameon=True)


def index_groups(num_nodes: int, num_groups: int = 5) -> dict[str, list[int]]:
    """Nodes split into at most ``num_groups`` runs of consecutive indices, for one colour each.

    The fallback grouping when nothing better is known: a figure with one colour per node runs
    out of distinguishable colours past about seven nodes.

    Parameters
    ----------
    num_nodes : int
        V.
    num_groups : int
        Most groups; each gets ``ceil(V / num_groups)`` nodes but the last.

    Returns
    -------
    dict[str, list[int]]
        ``{"nodes 0-4": [0, 1, 2, 3, 4], ...}`` (a single node is ``"node 7"``).
    """
    if num_nodes < 1 or num_groups < 1:
        raise ValueError(f"need num_nodes >= 1 and num_groups >= 1, got {num_nodes} and {num_groups}")
    size = math.ceil(num_nodes / num_groups)
    groups = {}
    for start in range(0, num_nodes, size):
        stop = min(start + size, num_nodes)
        name = f"node {start}" if stop - start == 1 else f"nodes {start}-{stop - 1}"
        groups[name] = list(range(start, stop))
    return groups


def _label_groups(key: Sequence[int]) -> dict[int, list[int]]:
    """Nodes of a label vector by their label: the grouping generation is conditioned on."""
    groups: dict[int, list[int]] = {}
    for node, label in enumerate(key):
        groups.setdefault(int(label), []).append(node)
    return dict(sorted(groups.items()))


def _check_groups(groups: Mapping[str, Sequence[int]], num_nodes: int) -> dict[str, list[int]]:
    checked = {str(name): [int(v) for v in nodes] for name, nodes in groups.items()}
    bad = [v for nodes in checked.values() for v in nodes if not 0 <= v < num_nodes]
    if not checked or any(not nodes for nodes in checked.values()) or bad:
        raise ValueError(f"node_groups must map names to non-empty lists of nodes in [0, {num_nodes}); got "
                         f"{dict(groups)}")
    return checked


def _scatter_groups(axis: Axes, rows: np.ndarray, groups: Sequence[tuple[list[int], str, str]],
                    size: float = 11.0, alpha: float = 0.55) -> None:
    """The points of ``rows`` ``(n, V, 2)``, one colour and marker per node group.

    The largest group is drawn first, so that a small group (a few anomalous nodes) stays on top.
    """
    for nodes, colour, marker in sorted(groups, key=lambda group: -len(group[0])):
        points = rows[:, nodes].reshape(-1, 2)
        axis.scatter(points[:, 0], points[:, 1], s=size, color=colour, marker=marker, alpha=alpha,
                     linewidths=0, zorder=2)


def _scatter_reference(axis: Axes, rows: np.ndarray) -> None:
    """Real points as small grey dots under the generated ones."""
    points = rows.reshape(-1, 2)
    axis.scatter(points[:, 0], points[:, 1], s=3, color=REAL_GREY, alpha=0.5, linewidths=0, zorder=1)


def generated_vs_real(real: Mapping[LabelKey, ArrayLike], generated: Mapping[LabelKey, ArrayLike],
                      path: str | os.PathLike, feature_names: Sequence[str] = ("x_0", "x_1"),
                      max_samples: int = 100, title: str | None = None,
                      units: str | None = STANDARDIZED,
                      node_groups: Mapping[str, Sequence[int]] | None = None,
                      boundary: Mapping[LabelKey, ArrayLike] | None = None,
                      boundary_name: str = "edge of the calibrated set") -> Path:
    """Real and generated graphs of each label vector in the (feature 0, feature 1) plane.

    One row of two panels per label vector ``Y``: the real samples, and the generated ones in
    front of the real ones in grey. Every node of every sample is a point, coloured (and shaped)
    by its node group: by default the nodes' labels ``Y_v``, since generation is conditioned on
    them. All panels share their axes; the key is below them.

    Parameters
    ----------
    real : mapping of tuple to array_like
        ``{Y: (n_Y, V, 2)}`` real node features per label vector ``Y`` (a tuple of V ints).
    generated : mapping of tuple to array_like
        ``{Y: (m_Y, V, 2)}`` generated features for the same label vectors.
    path : str or PathLike
        PNG file to write.
    feature_names : sequence of str
        Names of the two features, for the axis labels.
    max_samples : int
        At most this many samples of each kind per panel (the first ones).
    title : str, optional
        Figure title.
    units : str, optional
        Unit of the features, shown with their names; default the data sets' standardized units.
    node_groups : mapping of str to sequence of int, optional
        Named node groups, one colour each (e.g. :func:`index_groups` or regions); default the
        nodes' labels in each ``Y``.
    boundary : mapping of tuple to array_like, optional
        ``{Y: (b_Y, V, 2)}`` whole samples on the edge of a set for ``Y`` (e.g.
        :meth:`~dgl_iflow.models.base.FlowModel.uncertainty_set` at a calibrated radius),
        drawn as black crosses over the generated ones: every node of each.
    boundary_name : str
        Their name in the key.

    Returns
    -------
    Path
        ``path``.
    """
    if not real:
        raise ValueError("real must hold at least one label vector")
    if boundary is not None and not set(boundary) <= set(real):
        raise ValueError(f"boundary has label vectors {sorted(set(boundary) - set(real))} that real has not")
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
    num_nodes = len(panels[0][0])
    named = None if node_groups is None else _check_groups(node_groups, num_nodes)

    def groups_of(key: LabelKey) -> list[tuple[str, list[int], str, str]]:
        if named is not None:
            return [(name, nodes, *_style(i)) for i, (name, nodes) in enumerate(named.items())]
        # Colour by label value, so that a label keeps its colour in every row.
        return [(f"nodes with Y_v = {label}", nodes, *_style(label)) for label, nodes in _label_groups(key).items()]

    figure = _figure(8.6, 3.5 * len(panels) + 0.9)
    axes = figure.subplots(len(panels), 2, sharex=True, sharey=True, squeeze=False)
    keys: dict[str, Artist] = {}
    for (real_axis, generated_axis), (key, (real_rows, fake_rows), (n_real, n_fake)) in zip(axes, panels):
        groups = groups_of(key)
        for name, _, colour, marker in groups:
            keys.setdefault(name, _key_entry(colour, marker, name))
        styled = [(nodes, colour, marker) for _, nodes, colour, marker in groups]
        _scatter_groups(real_axis, real_rows, styled)
        _scatter_reference(generated_axis, real_rows)
        _scatter_groups(generated_axis, fake_rows, styled)
        if boundary is not None and key in boundary:
            edge = _numpy(boundary[key]).reshape(-1, 2)
            generated_axis.scatter(edge[:, 0], edge[:, 1], s=9, color="black", marker="x", linewidths=0.6,
                                   alpha=0.5, zorder=3)
            keys.setdefault(boundary_name, _key_entry("black", "x", boundary_name))
        label = _label_text(key)
        real_axis.set_title(f"{label}\nreal: {len(real_rows)} of {n_real} samples", fontsize=9, family="monospace")
        generated_axis.set_title(f"{label}\ngenerated: {len(fake_rows)} of {n_fake} samples", fontsize=9,
                                 family="monospace")
        for axis in (real_axis, generated_axis):
            axis.grid(alpha=0.25)
    # Shared axes: their names once, under the bottom row and left of the first column.
    for axis in axes[-1]:
        axis.set_xlabel(_with_units(feature_names[0], units), fontsize=9)
    for axis in axes[:, 0]:
        axis.set_ylabel(_with_units(feature_names[1], units), fontsize=9)
    handles = [*keys.values(), _key_entry(REAL_GREY, "o", "real samples, behind the generated ones", size=4)]
    _key_below(figure, handles, columns=min(len(handles), 3))
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _binned_means(targets: np.ndarray, values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres and means of ``values`` over the bins ``edges`` of ``targets`` (both flat); empty bins left out."""
    which = np.clip(np.digitize(targets, edges[1:-1]), 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    sums = np.bincount(which, weights=values, minlength=len(edges) - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    filled = counts > 0
    return centres[filled], sums[filled] / counts[filled]


def target_sweep(real_x: ArrayLike, real_y: ArrayLike, generated: ArrayLike, path: str | os.PathLike,
                 node_groups: Mapping[str, Sequence[int]] | None = None, feature: int = 0,
                 feature_name: str | None = None, units: str | None = STANDARDIZED, bins: int = 12,
                 title: str | None = None, target: int = 0) -> Path:
    """A node feature against the node's real-valued target, real and generated, one panel per node group.

    Every node of every row is a point (its target ``Y_v``, its feature): the real rows in grey,
    the generated ones in colour, and through each the feature's mean over ``bins`` equal bins
    of the targets, so the panels show how the law of the feature follows the target as it
    sweeps the data's range.

    Parameters
    ----------
    real_x : array_like
        ``(N, V, d)`` real rows.
    real_y : array_like
        ``(N, V)`` their targets, or ``(N, V, q)`` (coordinate ``target`` is drawn).
    generated : array_like
        ``(N, V, d)`` one generated row per real row, given that row's targets.
    path : str or PathLike
        PNG file to write.
    node_groups : mapping of str to sequence of int, optional
        One panel per named group of nodes; default :func:`index_groups`.
    feature : int
        Which of the ``d`` features to show.
    feature_name : str, optional
        Its name (default ``x_<feature>``).
    units : str, optional
        Unit of features and targets; default the data sets' standardized units.
    bins : int
        Bins of the targets for the mean lines.
    title : str, optional
        Figure title.
    target : int
        The target coordinate on the horizontal axis, for ``(N, V, q)`` targets.

    Returns
    -------
    Path
        ``path``.
    """
    x, y, fake = _numpy(real_x), _numpy(real_y), _numpy(generated)
    if y.ndim == 3:
        if not 0 <= target < y.shape[2]:
            raise ValueError(f"need a target coordinate in [0, {y.shape[2]}), got {target}")
        y = y[..., target]
    if x.ndim != 3 or fake.shape != x.shape or y.shape != x.shape[:2]:
        raise ValueError(f"need real_x and generated (N, V, d) and real_y (N, V[, q]) alike, got {x.shape}, "
                         f"{fake.shape} and {np.shape(real_y)}")
    if not 0 <= feature < x.shape[2] or bins < 1:
        raise ValueError(f"need a feature in [0, {x.shape[2]}) and bins >= 1, got {feature} and {bins}")
    groups = _check_groups(node_groups or index_groups(x.shape[1]), x.shape[1])
    edges = np.linspace(y.min(), y.max(), bins + 1)
    name = _with_units(feature_name or f"x_{feature}", units)
    columns = min(len(groups), 3)
    rows = math.ceil(len(groups) / columns)
    figure = _figure(3.4 * columns + 0.4, 3.0 * rows + 0.9)
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    colour = GENERATED_COLOUR  # one colour throughout: the panel titles name the groups
    for axis, (group, nodes) in zip(axes, groups.items()):
        targets = y[:, nodes].ravel()
        real_values, fake_values = x[:, nodes, feature].ravel(), fake[:, nodes, feature].ravel()
        axis.scatter(targets, real_values, s=3, color=REAL_GREY, alpha=0.5, linewidths=0, zorder=1)
        axis.scatter(targets, fake_values, s=4, color=colour, alpha=0.3, linewidths=0, zorder=2)
        axis.plot(*_binned_means(targets, real_values, edges), color="black", linestyle="--", zorder=3)
        axis.plot(*_binned_means(targets, fake_values, edges), color=colour, zorder=4)
        axis.set_title(group, fontsize=9)
        axis.grid(alpha=0.25)
    for axis in axes[len(groups):]:
        axis.set_visible(False)
    for axis in axes[(rows - 1) * columns:]:
        axis.set_xlabel(_with_units("target Y_v", units), fontsize=9)
    for axis in axes[::columns]:
        axis.set_ylabel(name, fontsize=9)
    handles = [_key_entry(colour, "o", "generated, given the real targets"),
               _key_entry(REAL_GREY, "o", "real", size=4),
               _key_entry(colour, label="generated mean per target bin", linestyle="-"),
               _key_entry("black", label="real mean per target bin", linestyle="--")]
    _key_below(figure, handles, columns=2)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def predicted_vs_true(y_true: ArrayLike, mean: ArrayLike, lower: ArrayLike, upper: ArrayLike,
                      path: str | os.PathLike, level: float = 0.9, max_points: int = 300,
                      units: str | None = STANDARDIZED, title: str | None = None) -> Path:
    """Predicted real-valued targets against the true ones, with their intervals.

    One point per (row, node), with its interval as a vertical bar, and the diagonal; the key
    gives the intervals' coverage over all points and their mean width.

    Parameters
    ----------
    y_true, mean, lower, upper : array_like
        ``(N, V)`` true targets, predictions and interval ends, alike in shape.
    path : str or PathLike
        PNG file to write.
    level : float
        The intervals' nominal level, for the key.
    max_points : int
        At most this many points drawn, evenly spaced over the rows (coverage uses all).
    units : str, optional
        Unit of the targets; default the data sets' standardized units.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    truth, centre, low, high = (_numpy(a).ravel() for a in (y_true, mean, lower, upper))
    shapes = {tuple(np.shape(_numpy(a))) for a in (y_true, mean, lower, upper)}
    if len(shapes) != 1 or not len(truth):
        raise ValueError(f"y_true, mean, lower and upper must be non-empty and alike in shape, got {sorted(shapes)}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    coverage = float(((truth >= low) & (truth <= high)).mean())
    shown = np.unique(np.linspace(0, len(truth) - 1, min(max_points, len(truth))).round().astype(int))
    figure = _figure(4.6, 4.9)
    axis = figure.subplots()
    axis.errorbar(truth[shown], centre[shown], yerr=[centre[shown] - low[shown], high[shown] - centre[shown]],
                  fmt="o", markersize=3, color=PALETTE[0], ecolor=PALETTE[0], elinewidth=0.6, alpha=0.6, zorder=2)
    ends = [min(truth.min(), low.min()), max(truth.max(), high.max())]
    axis.plot(ends, ends, color="black", linestyle="--", linewidth=0.8, zorder=1)
    axis.set_xlabel(_with_units("true target", units), fontsize=9)
    axis.set_ylabel(_with_units("predicted target", units), fontsize=9)
    axis.grid(alpha=0.25)
    handles = [_key_entry(PALETTE[0], "o", f"prediction, {level:.0%} interval: covers {coverage:.3f}, "
                                           f"mean width {float((high - low).mean()):.3g}"),
               _key_entry("black", label="prediction = truth", linestyle="--")]
    _key_below(figure, handles, columns=1)
    if title:
        figure.suptitle(textwrap.fill(title, 52))  # a narrow figure: long titles wrap rather than run off
    return _save(figure, path)


def generated_samples(samples: ArrayLike, path: str | os.PathLike, labels: ArrayLike | Sequence[int] | None = None,
                      real: ArrayLike | None = None, feature_names: Sequence[str] = ("x_0", "x_1"),
                      units: str | None = STANDARDIZED, node_names: Sequence[str] | None = None,
                      node_groups: Mapping[str, Sequence[int]] | None = None, max_samples: int = 200,
                      title: str | None = None) -> Path:
    """Generated graphs of one label vector in the (feature 0, feature 1) plane, beside real ones if given.

    Every node of every sample is a point, coloured and shaped by its node group: the nodes'
    labels when ``labels`` is given, else runs of consecutive nodes (:func:`index_groups`). With
    ``real``, a first panel shows the real samples the same way and the generated panel shows
    them in grey behind the generated ones.

    Parameters
    ----------
    samples : array_like
        ``(n, V, d)`` generated features, ``d >= 2``; the first two features are drawn.
    path : str or PathLike
        PNG file to write.
    labels : array_like, optional
        ``(V,)`` the label vector the samples were generated for.
    real : array_like, optional
        ``(m, V, d)`` real samples with the same labels, for reference.
    feature_names : sequence of str
        Names of the two features drawn.
    units : str, optional
        Unit of the features; default the data sets' standardized units (what models generate).
    node_names : sequence of str, optional
        V node names, listed in the key when a group has at most 6 nodes; default the indices.
    node_groups : mapping of str to sequence of int, optional
        Named node groups, one colour each, instead of the default grouping.
    max_samples : int
        At most this many samples of each kind are drawn (the first ones).
    title : str, optional
        Figure title; default names the label vector.

    Returns
    -------
    Path
        ``path``.
    """
    rows = _numpy(samples)
    if rows.ndim != 3 or rows.shape[2] < 2:
        raise ValueError(f"samples must have shape (n, V, d) with d >= 2, got {rows.shape}")
    num_nodes = rows.shape[1]
    key = None if labels is None else tuple(int(v) for v in torch.as_tensor(labels).reshape(-1).tolist())
    if key is not None and len(key) != num_nodes:
        raise ValueError(f"labels must hold one label per node ({num_nodes}), got {len(key)}")
    reference = None if real is None else _numpy(real)
    if reference is not None and (reference.ndim != 3 or reference.shape[1:] != rows.shape[1:]):
        raise ValueError(f"real must have the shape of the samples (m, {num_nodes}, {rows.shape[2]}), "
                         f"got {reference.shape}")
    if len(feature_names) != 2:
        raise ValueError(f"need 2 feature names, got {list(feature_names)}")
    if node_names is not None and len(node_names) != num_nodes:
        raise ValueError(f"{len(node_names)} node names for V = {num_nodes} nodes")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    names = [str(v) for v in range(num_nodes)] if node_names is None else [str(name) for name in node_names]

    def members(nodes: list[int]) -> str:
        if len(nodes) > 6:
            return f" ({len(nodes)} nodes)"
        return f": node{'s' if len(nodes) > 1 else ''} " + ", ".join(names[v] for v in nodes)

    if node_groups is not None:
        groups = [(name, nodes, *_style(i)) for i, (name, nodes) in
                  enumerate(_check_groups(node_groups, num_nodes).items())]
    elif key is not None:
        groups = [(f"Y_v = {label}{members(nodes)}", nodes, *_style(label))
                  for label, nodes in _label_groups(key).items()]
    else:
        groups = [(name, nodes, *_style(i)) for i, (name, nodes) in enumerate(index_groups(num_nodes).items())]
    styled = [(nodes, colour, marker) for _, nodes, colour, marker in groups]
    drawn = rows[:max_samples, :, :2]

    figure = _figure(8.6 if reference is not None else 5.2, 5.0)
    axes = figure.subplots(1, 2 if reference is not None else 1, sharex=True, sharey=True, squeeze=False).ravel()
    if reference is not None:
        shown = reference[:max_samples, :, :2]
        _scatter_groups(axes[0], shown, styled)
        _scatter_reference(axes[1], shown)
        axes[0].set_title(f"real: {len(shown)} of {len(reference)} samples", fontsize=10)
    _scatter_groups(axes[-1], drawn, styled)
    axes[-1].set_title(f"generated: {len(drawn)} of {len(rows)} samples", fontsize=10)
    for axis in axes:
        axis.set_xlabel(_with_units(feature_names[0], units))
        axis.set_ylabel(_with_units(feature_names[1], units))
        axis.grid(alpha=0.25)
    handles = [_key_entry(colour, marker, name) for name, _, colour, marker in groups]
    if reference is not None:
        handles.append(_key_entry(REAL_GREY, "o", "real samples, behind the generated ones", size=4))
    _key_below(figure, handles, columns=min(len(handles), 2 if reference is None else 3))
    if title:
        figure.suptitle(title)
    else:
        figure.suptitle("generated X" if key is None else f"generated X | {_label_text(key)}", fontsize=11,
                        family="monospace")
    return _save(figure, path)


def node_probabilities(proba: ArrayLike, labels: ArrayLike, path: str | os.PathLike,
                       node_names: Sequence[str] | None = None, max_samples: int = 40,
                       positive: int = 1, title: str | None = None) -> Path:
    """Heatmap of predicted ``P(Y_v = positive | X)``, nodes (rows) by samples, true labels marked.

    Cells are coloured from 0 (white) to 1 (dark); a dot marks every node whose true label is
    ``positive``, so a dot on a pale cell is a missed event and a dark cell without a dot a
    false alarm. The key to the dots is below the panel.

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

    figure = _figure(min(2.6 + 0.28 * num_samples, 16.0), 1.9 + 0.3 * num_nodes)
    axis = figure.subplots()
    # The image has one row per node: (n, V) -> (V, n).
    image = axis.imshow(p[:, :, positive].T, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                        interpolation="nearest")
    samples, nodes = np.nonzero(y == positive)
    axis.scatter(samples, nodes, s=14, color=GENERATED_COLOUR, edgecolors="black", linewidths=0.4)
    axis.set_yticks(range(num_nodes), names, fontsize=8)
    axis.set_xlabel("test sample (row of the test split)")
    axis.set_ylabel("node")
    figure.colorbar(image, ax=axis, label=f"predicted P(Y_v = {positive} | X)", shrink=0.9)
    accuracy = float((p.argmax(axis=2) == y).mean())
    axis.set_title(title or f"predicted P(Y_v = {positive} | X), first {num_samples} test "
                            f"samples (node accuracy {accuracy:.3f})", fontsize=10)
    dot = _key_entry(GENERATED_COLOUR, "o", f"true label Y_v = {positive} (a dot on a pale cell: missed)", size=5)
    dot.set_markeredgecolor("black")
    _key_below(figure, [dot])
    return _save(figure, path)


#: Quantities of a training history that are means over an epoch's mini-batches; the others are
#: measured once after the epoch (validation NLL, inversion check, learning rate, ...).
_TRAINING_MEANS = ("loss", "nll", "ce", "transport", "barrier")
#: Panel title and y-axis label of each quantity in a training history.
_CURVES = {
    "loss": ("training objective", "NLL + μ CE + γ W (nats)"),
    "nll": ("negative log-likelihood", "nats per sample"),
    "val_nll": ("validation NLL", "nats per sample"),
    "ce": ("latent cross-entropy", "nats per node"),
    "transport": ("transport cost W", "(feature units)² per sample"),
    "barrier": ("mean-separation barrier", "penalty"),
    "inversion_error": ("round-trip error of the inverse", "max relative error (log scale)"),
    "shrinks": ("invertibility repairs", "blocks rescaled"),
    "lr": ("learning rate", "learning rate"),
    "seconds": ("time per epoch", "seconds"),
}


def training_curves(epochs: TrainHistory | Sequence[Mapping[str, float]], path: str | os.PathLike,
                    keys: Sequence[str] = ("loss", "nll", "ce", "transport", "inversion_error"),
                    title: str | None = None) -> Path:
    """Per-epoch training curves, one panel per quantity; validation NLL beside the training NLL.

    Takes what :func:`~dgl_iflow.fit` returns, or its ``epochs`` as written to ``history.json``.
    The training values are means over each epoch's mini-batches; with validation data the NLL
    panel also shows ``val_nll``, and a dotted line marks the best validation epoch. The
    inversion error is on a log scale. The key is below the panels.

    Parameters
    ----------
    epochs : TrainHistory or sequence of mapping
        The history of :func:`~dgl_iflow.fit`, or one dict per epoch (``TrainHistory.epochs``);
        an epoch's number is its ``epoch`` entry when it has one (a resumed run), else its
        position from 1.
    path : str or PathLike
        PNG file to write.
    keys : sequence of str
        Quantities to draw, one panel each; those absent from every epoch are skipped.
        ``val_nll`` is drawn in the ``nll`` panel when both are drawn.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    records = list(getattr(epochs, "epochs", epochs))
    best_epoch = getattr(epochs, "best_epoch", None)
    if not records:
        raise ValueError("epochs is empty: nothing to plot")
    present = [key for key in keys if any(key in epoch for epoch in records)]
    if not present:
        raise ValueError(f"none of {list(keys)} occurs in the history; its keys are "
                         f"{sorted(set().union(*records))}")
    validation = any("val_nll" in epoch for epoch in records)
    if "nll" in present and "val_nll" in present:
        present.remove("val_nll")
    from matplotlib.ticker import MaxNLocator

    def curve(key: str) -> tuple[list[float], list[float]]:
        points = [(float(epoch.get("epoch", number)), float(epoch[key]))
                  for number, epoch in enumerate(records, start=1) if key in epoch]
        return [x for x, _ in points], [y for _, y in points]

    train_colour, train_marker = _style(0)
    val_colour, val_marker = _style(1)
    after_colour, after_marker = _style(2)
    columns = min(len(present), 3)
    rows_count = math.ceil(len(present) / columns)
    figure = _figure(4.2 * columns, 3.1 * rows_count + 0.7)
    axes = figure.subplots(rows_count, columns, squeeze=False).ravel()
    kinds = set()
    for axis, key in zip(axes, present):
        kind = "training" if key in _TRAINING_MEANS else "validation" if key == "val_nll" else "after"
        kinds.add(kind)
        colour, marker = {"training": (train_colour, train_marker), "validation": (val_colour, val_marker),
                          "after": (after_colour, after_marker)}[kind]
        axis.plot(*curve(key), marker=marker, markersize=3.5, color=colour)
        if key == "nll" and validation:
            axis.plot(*curve("val_nll"), marker=val_marker, markersize=3.5, color=val_colour)
        if best_epoch is not None and key in ("nll", "val_nll", "loss"):
            axis.axvline(best_epoch, color="0.35", linestyle=":", linewidth=1.2)
        if key == "inversion_error":
            axis.set_yscale("log")
        name, unit = _CURVES.get(key, (key, key))
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("epoch")
        axis.set_ylabel(unit, fontsize=9)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in axes[len(present):]:
        axis.set_visible(False)
    handles = []
    if "training" in kinds:
        handles.append(_key_entry(train_colour, train_marker, "training: mean over the epoch's mini-batches",
                                  linestyle="-", size=4))
    if validation and ("nll" in present or "val_nll" in present):
        handles.append(_key_entry(val_colour, val_marker, "validation", linestyle="-", size=4))
    if "after" in kinds:
        handles.append(_key_entry(after_colour, after_marker, "measured after the epoch", linestyle="-", size=4))
    if best_epoch is not None:
        handles.append(_key_entry("0.35", None, f"best validation epoch ({best_epoch})", linestyle=":"))
    _key_below(figure, handles)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def jko_movements(history, path: str | os.PathLike, generated: ArrayLike | None = None,
                  real: ArrayLike | None = None, title: str | None = None,
                  units: str | None = None) -> Path:
    r"""Per-block movement :math:`a_k = (\mathbb{E}\|x(t_{k+1}) - x(t_k)\|^2)^{1/2}` of every stage of a
    JKO-iFlow run against time, and beside it generated against real samples.

    Each stage (the first pass, every re-spacing and refinement) is one step curve over its time
    grid, in its own colour, so the panel shows how re-spacing evens the movement out; a stage
    that validation rolled back is dashed. Real samples are grey, generated ones coloured; the
    key is below the panels.

    Parameters
    ----------
    history : JKOHistory
        From :func:`~dgl_iflow.fit_jko`.
    path : str or PathLike
        PNG file to write.
    generated, real : array_like, optional
        ``(n, V, d)`` or ``(n, d)`` samples, ``d >= 2``; the first two coordinates of each row
        (features 0 and 1 of node 0) are drawn.
    title : str, optional
        Figure title.
    units : str, optional
        Unit of the features (e.g. ``"standardized units"``), shown on the axes.

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
    figure = _figure(10.0 if samples else 5.4, 4.2)
    axes = figure.subplots(1, 2 if samples else 1, squeeze=False).ravel()
    handles = []
    for number, stage in enumerate(stages):
        records = history.stage(stage)
        edges = [records[0].t0, *(record.t1 for record in records)]
        colour, _ = _style(number)
        linestyle = "--" if stage in rejected else "-"
        axes[0].stairs(history.movements(stage), edges, baseline=None, color=colour, linestyle=linestyle,
                       linewidth=1.8)
        handles.append(_key_entry(colour, None, stage + (" (rolled back)" if stage in rejected else ""),
                                  linestyle=linestyle))
    axes[0].set_xlabel("flow time t")
    axes[0].set_ylabel(_with_units("RMS movement a_k of block k", units))
    axes[0].set_title("movement per block", fontsize=10)
    axes[0].grid(alpha=0.3)
    if samples:
        real_flat, generated_flat = (_numpy(values).reshape(len(values), -1) for values in (real, generated))
        axes[1].scatter(real_flat[:, 0], real_flat[:, 1], s=5, color=REAL_GREY, alpha=0.6, linewidths=0, zorder=1)
        axes[1].scatter(generated_flat[:, 0], generated_flat[:, 1], s=14, color=GENERATED_COLOUR, marker="^",
                        alpha=0.6, linewidths=0, zorder=2)
        node = "node 0, " if _numpy(real).ndim == 3 else ""
        axes[1].set_xlabel(_with_units(f"{node}feature 0", units))
        axes[1].set_ylabel(_with_units(f"{node}feature 1", units))
        axes[1].set_title("generated against real samples", fontsize=10)
        axes[1].grid(alpha=0.3)
        handles += [_key_entry(REAL_GREY, "o", f"real ({len(real_flat)})", size=4),
                    _key_entry(GENERATED_COLOUR, "^", f"generated ({len(generated_flat)})", size=5)]
    _key_below(figure, handles)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def convergence(runs: Mapping[str, Sequence[Sequence[tuple[float, float, float]]]], path: str | os.PathLike,
                ylabel: str = "test NLL (nats per sample)", title: str | None = None) -> Path:
    """A quality measure against mini-batches and against training wall time, per model and run.

    Parameters
    ----------
    runs : mapping
        Model name to its runs (one per seed); a run is a sequence of
        ``(mini-batches, seconds, value)`` points in training order. One colour and marker per
        model, one line per run; the key is below the panels.
    path : str or PathLike
        PNG file to write.
    ylabel : str
        What the value is, with its unit.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    if not any(len(run) for model_runs in runs.values() for run in model_runs):
        raise ValueError("runs hold no points: nothing to plot")
    figure = _figure(9.6, 4.2)
    axes = figure.subplots(1, 2, squeeze=False).ravel()
    handles = []
    for number, (name, model_runs) in enumerate(runs.items()):
        colour, marker = _style(number)
        drawn = [run for run in model_runs if run]
        for run in drawn:
            minibatches, seconds, values = (np.asarray(column, dtype=float) for column in zip(*run))
            for axis, x in zip(axes, (minibatches, seconds)):
                axis.plot(x, values, marker=marker, markersize=3.5, color=colour, alpha=0.8)
        if drawn:
            runs_text = f"{len(drawn)} run{'s' if len(drawn) > 1 else ''}"
            handles.append(_key_entry(colour, marker, f"{name} ({runs_text})", linestyle="-", size=4))
    for axis, xlabel in zip(axes, ("mini-batches (log scale)", "training wall time (s, log scale)")):
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3, which="both")
    _key_below(figure, handles)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def reliability_diagram(curves: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Nominal against observed coverage of the sets, confidence against accuracy of the predictors,
    and the false-alarm rate of anomaly p-values against their level.

    Parameters
    ----------
    curves : mapping
        The ``curves`` of :func:`~dgl_iflow.evaluation.uncertainty_report`: ``sets`` (``levels``
        and the observed coverage per kind of set at each), ``probabilities`` (per
        predictor, :class:`~dgl_iflow.metrics.ReliabilityBins` as lists) and, optionally,
        ``alarms`` (``levels`` and, per scorer, the share of normal nodes flagged at each).
    path : str or PathLike
        PNG file to write.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    sets, probabilities = curves["sets"], curves["probabilities"]
    alarms = {name: rates for name, rates in curves.get("alarms", {}).items() if name != "levels"}
    figure = _figure(13.0 if alarms else 9.0, 4.6)
    axes = figure.subplots(1, 3 if alarms else 2)
    coverage_axis, calibration_axis = axes[0], axes[1]
    names = {"raw": "model's own set (chi-squared radius)", "split": "split conformal",
             "adaptive": "adaptive conformal (online)"}
    handles = [_key_entry("black", None, "ideal", linestyle=":")]
    levels = np.asarray(sets["levels"])
    for index, (kind, name) in enumerate(names.items()):
        colour, marker = _style(index)
        coverage_axis.plot(levels, sets[kind], color=colour, marker=marker, markersize=4, linewidth=1.2)
        handles.append(_key_entry(colour, marker, f"set: {name}", linestyle="-"))
    for index, (name, table) in enumerate(probabilities.items(), start=len(names)):
        colour, marker = _style(index)
        confidence = np.asarray([np.nan if v is None else v for v in table["confidence"]], dtype=float)
        accuracy = np.asarray([np.nan if v is None else v for v in table["accuracy"]], dtype=float)
        filled = ~np.isnan(confidence)
        calibration_axis.plot(confidence[filled], accuracy[filled], color=colour, marker=marker, markersize=4,
                              linewidth=1.2)
        handles.append(_key_entry(colour, marker, f"probabilities: {name}", linestyle="-"))
    if alarms:
        alarm_axis = axes[2]
        alpha = np.asarray(curves["alarms"]["levels"])
        for index, (name, rates) in enumerate(alarms.items(), start=len(names) + len(probabilities)):
            colour, marker = _style(index)
            alarm_axis.plot(alpha, rates, color=colour, marker=marker, markersize=4, linewidth=1.2)
            handles.append(_key_entry(colour, marker, f"alarms: {name}", linestyle="-"))
        alarm_axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="alpha (flag a node when p <= alpha)",
                       ylabel="share of normal nodes flagged", title="anomaly p-values")
    for axis in axes:
        axis.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1)
        axis.grid(alpha=0.25)
        axis.set_aspect("equal")
    coverage_axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal level", ylabel="share of held-out samples inside",
                      title="sets for X | Y")
    calibration_axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability of the top class",
                         ylabel="share correct", title="node-label probabilities")
    for axis in axes:
        axis.title.set_fontsize(10)
        axis.xaxis.label.set_fontsize(9)
        axis.yaxis.label.set_fontsize(9)
    _key_below(figure, handles, columns=3 if alarms else 2)
    if title:
        figure.suptitle(title)
    return _save(figure, path)
