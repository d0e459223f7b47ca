"""Two-dimensional toy distributions on a one-node graph (V = 1, d = 2).

Each sample is one point; the graph is a single node with a self-loop so that graph layers
see the same structure as on real graphs. Class labels make the tasks conditional: X | Y is the
distribution of one moon, one Gaussian component or one square colour.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GraphDataset, graph_from_edges, stratified_split

TEST_FRACTION = 0.2
FEATURE_NAMES = ["x1", "x2"]


def _single_node_dataset(name: str, points: Tensor, labels: Tensor, num_classes: int,
                         generator: torch.Generator, info: dict) -> GraphDataset:
    """Wrap (N, 2) points and (N,) labels as a V = 1 data set with a stratified 80/20 split."""
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, generator)
    loop = torch.zeros(1, dtype=torch.int64)
    return GraphDataset(
        name=name, graph=graph_from_edges(loop, loop, 1), x=points.unsqueeze(1),
        y=labels.unsqueeze(1), train_idx=train_idx, test_idx=test_idx,
        num_classes=num_classes, node_names=["0"], feature_names=list(FEATURE_NAMES),
        info={**info, "test_fraction": TEST_FRACTION, "split": "stratified by class"})


def _class_counts(n: int, proportions: tuple[float, ...]) -> list[int]:
    """Exact per-class counts summing to ``n``; the last class takes the rounding remainder."""
    counts = [round(n * share) for share in proportions[:-1]]
    counts.append(n - sum(counts))
    if min(counts) < 0:
        raise ValueError(f"proportions {proportions} do not fit n = {n}")
    return counts


def three_moons(n: int = 2000, seed: int = 0,
                proportions: tuple[float, float, float] = (0.5, 0.3, 0.2),
                noise: float = 0.1) -> GraphDataset:
    """Three interleaved half-moons with imbalanced classes.

    Unit half-circles: class 0 the upper one centred at (0, 0), class 1 the lower one centred
    at (1.25, 0.5), class 2 the upper one centred at (2.5, 0); each end of moon 1's arc reaches
    inside the circle of its neighbours, so the moons interleave without touching. Angles are
    uniform on the half-circle, Gaussian noise of std ``noise`` is added, and the whole cloud is
    shifted by (-1.25, -0.25) to sit around the origin.

    Parameters
    ----------
    n : int
        Number of points N.
    seed : int
        Seed of the ``torch.Generator`` used for sampling and for the split.
    proportions : tuple of 3 floats
        Class shares; counts are exact (rounded), default 0.5 / 0.3 / 0.2.
    noise : float
        Standard deviation of the isotropic Gaussian noise.

    Returns
    -------
    GraphDataset
        x (N, 1, 2), y (N, 1) in {0, 1, 2}.
    """
    if len(proportions) != 3 or abs(sum(proportions) - 1.0) > 1e-9:
        raise ValueError(f"proportions must be 3 shares summing to 1, got {proportions}")
    generator = torch.Generator().manual_seed(seed)
    # (centre x, centre y, +1 for an upper arc / -1 for a lower arc)
    moons = [(0.0, 0.0, 1.0), (1.25, 0.5, -1.0), (2.5, 0.0, 1.0)]
    points, labels = [], []
    for label, (count, (cx, cy, side)) in enumerate(zip(_class_counts(n, proportions), moons)):
        angle = torch.rand(count, generator=generator, dtype=torch.float64) * math.pi
        arc = torch.stack([cx + torch.cos(angle), cy + side * torch.sin(angle)], dim=1)
        points.append(arc + noise * torch.randn(count, 2, generator=generator, dtype=torch.float64))
        labels.append(torch.full((count,), label, dtype=torch.int64))
    centred = torch.cat(points) - torch.tensor([1.25, 0.25], dtype=torch.float64)
    info = {"n": n, "seed": seed, "proportions": list(proportions), "noise": noise,
            "moons (centre_x, centre_y, side)": moons, "shift": [-1.25, -0.25]}
    return _single_node_dataset("three_moons", centred, torch.cat(labels), 3, generator, info)


def eight_gaussians(n: int = 2000, seed: int = 0, radius: float = 2.0,
                    std: float = 0.2) -> GraphDataset:
    """Eight isotropic Gaussians evenly spaced on a circle; label = component.

    Component k has mean ``radius * (cos(k pi / 4), sin(k pi / 4))`` and covariance
    ``std**2 I``. Counts are equal up to one (the first ``n % 8`` components get one more).

    Parameters
    ----------
    n : int
        Number of points N.
    seed : int
        Seed of the ``torch.Generator`` used for sampling and for the split.
    radius : float
        Distance of every mean from the origin.
    std : float
        Per-coordinate standard deviation of each component.

    Returns
    -------
    GraphDataset
        x (N, 1, 2), y (N, 1) in {0, ..., 7}.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 8
    angles = labels.to(torch.float64) * (math.pi / 4)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    points = means + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    info = {"n": n, "seed": seed, "radius": radius, "std": std}
    return _single_node_dataset("eight_gaussians", points, labels, 8, generator, info)


def checkerboard(n: int = 2000, seed: int = 0, squares: int = 4) -> GraphDataset:
    """Points uniform on a ``squares x squares`` board of unit squares centred at the origin.

    The label is the colour of the square a point falls in,
    ``(floor(x1) + floor(x2)) mod 2`` in board coordinates, so each class is uniform on its
    own colour; classes are balanced in expectation (not exactly).

    Parameters
    ----------
    n : int
        Number of points N.
    seed : int
        Seed of the ``torch.Generator`` used for sampling and for the split.
    squares : int
        Squares per side; the board spans ``[-squares / 2, squares / 2]^2``.

    Returns
    -------
    GraphDataset
        x (N, 1, 2), y (N, 1) in {0, 1}.
    """
    generator = torch.Generator().manual_seed(seed)
    board = squares * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    labels = torch.floor(board).to(torch.int64).sum(dim=1) % 2
    info = {"n": n, "seed": seed, "squares": squares}
    return _single_node_dataset("checkerboard", board - squares / 2, labels, 2, generator, info)
