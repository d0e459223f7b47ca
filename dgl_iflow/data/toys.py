"""Two-dimensional toy distributions on a one-node graph (V = 1, d = 2).

Each sample is one point; the graph is a single node with a self-loop so that graph layers
see the same structure as on real graphs. Class labels make the tasks conditional: X | Y is the
distribution of one moon, one Gaussian component, one square colour, one rose petal or one part
of a fractal tree. ``rose`` and ``tree`` are analytic stand-ins for the two pictures of the
JKO-iFlow paper (Xu, Cheng, Xie, "Normalizing flow neural networks by JKO scheme", NeurIPS 2023).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GraphDataset, sorted_graph, stratified_split

TEST_FRACTION = 0.2
FEATURE_NAMES = ["x1", "x2"]


def _single_node_dataset(name: str, points: Tensor, labels: Tensor, num_classes: int,
                         generator: torch.Generator, info: dict) -> GraphDataset:
    """Wrap (N, 2) points and (N,) labels as a V = 1 data set with a stratified 80/20 split."""
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, generator)
    loop = torch.zeros(1, dtype=torch.int64)
    return GraphDataset(
        name=name, graph=sorted_graph(loop, loop, 1), x=points.unsqueeze(1),
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


def rose(n: int = 2000, seed: int = 0, k: int = 3, radius: float = 2.0,
         noise: float = 0.05) -> GraphDataset:
    """Points near the rose curve ``r = radius * |cos(k theta)|``; label = petal.

    The curve has ``2 k`` petals; petal j (j = 0..2k-1) is the loop through the origin traced by
    ``theta`` in ``[j pi / k - pi / (2k), j pi / k + pi / (2k)]``, with its tip at distance
    ``radius`` in direction ``j pi / k``. Petals get equal counts up to one (the first
    ``n % (2k)`` get one more); within a petal the polar angle is uniform (not the arc length,
    which would pile points up where all petals meet at the origin). Isotropic Gaussian noise of
    std ``noise`` is added. The cloud is centred at the origin and lies within ``radius`` of it
    (plus noise).

    The JKO-iFlow paper's "rose" is sampled from a line drawing of a rose flower (pixels of its
    picture, ``img_rose.png`` in github.com/hamrel-cxu/JKO-iFlow, mapped to [-4, 4]^2), which has
    no closed form; this rhodonea curve is an analytic curve-like stand-in with the same
    character (thin curves, a point where they all meet), not that picture.

    Parameters
    ----------
    n : int
        Number of points N.
    seed : int
        Seed of the ``torch.Generator`` used for sampling and for the split.
    k : int
        Angular frequency; the rose has ``2 k`` petals and classes (k = 2 is the four-leaved
        rose ``r = cos 2 theta``).
    radius : float
        Length of each petal, from the origin to its tip.
    noise : float
        Standard deviation of the isotropic Gaussian noise.

    Returns
    -------
    GraphDataset
        x (N, 1, 2), y (N, 1) in {0, ..., 2k - 1}.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    petals = 2 * k
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % petals
    half_width = math.pi / (2 * k)
    offset = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * half_width
    theta = labels.to(torch.float64) * (math.pi / k) + offset
    r = radius * torch.cos(k * offset)  # = radius * |cos(k theta)| on petal j
    curve = r.unsqueeze(1) * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    points = curve + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    info = {"n": n, "seed": seed, "k": k, "petals": petals, "radius": radius, "noise": noise,
            "curve": "r = radius * |cos(k theta)|, petal j centred at theta = j pi / k"}
    return _single_node_dataset("rose", points, labels, petals, generator, info)


def tree_segments(depth: int = 7, angle: float = math.pi / 6, ratio: float = 0.7,
                  trunk: float = 1.2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The branches of the binary fractal tree of ``tree``, before centring.

    The trunk (level 0) runs from (0, 0) straight up with length ``trunk``. Every branch of
    level ``l < depth`` forks at its end into two branches of level ``l + 1``, turned by
    ``+angle`` (left) and ``-angle`` (right) from its direction and ``ratio`` times as long.

    Parameters
    ----------
    depth : int
        Number of forkings; the tree has ``2 ** (depth + 1) - 1`` branches.
    angle : float
        Turn between a branch and each of its two children, in radians.
    ratio : float
        Length of a child over the length of its parent.
    trunk : float
        Length of the trunk.

    Returns
    -------
    starts, ends : Tensor
        Shape (S, 2) float64, the end points of the S branches, level by level.
    level : Tensor
        Shape (S,) int64, the level of each branch (0 for the trunk).
    position : Tensor
        Shape (S,) int64, the index of each branch among those of its level, left to right.
    """
    if depth < 0:
        raise ValueError(f"depth must be non-negative, got {depth}")
    start = torch.zeros(1, 2, dtype=torch.float64)
    heading = torch.full((1,), math.pi / 2, dtype=torch.float64)
    length = trunk
    starts, ends, levels, positions = [], [], [], []
    for level in range(depth + 1):
        end = start + length * torch.stack([torch.cos(heading), torch.sin(heading)], dim=1)
        starts.append(start)
        ends.append(end)
        levels.append(torch.full((len(start),), level, dtype=torch.int64))
        positions.append(torch.arange(len(start)))
        # Children of branch i are 2i (left, turned by +angle) and 2i + 1 (right).
        start = end.repeat_interleave(2, dim=0)
        heading = torch.stack([heading + angle, heading - angle], dim=1).reshape(-1)
        length *= ratio
    return torch.cat(starts), torch.cat(ends), torch.cat(levels), torch.cat(positions)


def tree(n: int = 2000, seed: int = 0, depth: int = 7, class_depth: int = 2,
         angle: float = math.pi / 6, ratio: float = 0.7, trunk: float = 1.2,
         noise: float = 0.02) -> GraphDataset:
    """Points near the branches of a binary fractal tree; label = part of the tree.

    The branches are those of ``tree_segments(depth, angle, ratio, trunk)``: a vertical trunk
    that forks ``depth`` times, each child turned by ``+-angle`` and ``ratio`` times as long as
    its parent. Class 0 is the stem, the branches of levels below ``class_depth`` (by default
    the trunk and its two children); class ``1 + i`` is the sub-tree rooted at the i-th branch of
    level ``class_depth``, counted left to right. The ``2 ** class_depth`` sub-trees are
    congruent. Classes get equal counts up to one (the first ``n % classes`` get one more);
    within a class, a point is uniform along the class's branches (a branch is picked with
    probability proportional to its length, then a uniform point on it), and isotropic Gaussian
    noise of std ``noise`` is added. The stem so carries more points per unit length than the
    crown, much as the thick trunk of the paper's picture carries more ink. The cloud is shifted
    vertically so the tree's bounding box is centred at the origin; with the defaults it spans
    about [-2.0, 2.0] x [-1.8, 1.8].

    The JKO-iFlow paper's "fractal tree" is sampled from a picture (``img_tree.png`` in
    github.com/hamrel-cxu/JKO-iFlow, pixels mapped to [-4, 4]^2): a vertical trunk that forks
    again and again into two branches, each turned by about 30 degrees and shorter and thinner
    than its parent. This analytic tree follows that shape; it is not that picture.

    Parameters
    ----------
    n : int
        Number of points N.
    seed : int
        Seed of the ``torch.Generator`` used for sampling and for the split.
    depth : int
        Number of forkings of the trunk.
    class_depth : int
        Level whose branches root the labelled sub-trees, in [1, depth]; there are
        ``1 + 2 ** class_depth`` classes (3, 5 and 9 for 1, 2 and 3).
    angle : float
        Turn between a branch and each of its two children, in radians.
    ratio : float
        Length of a child over the length of its parent.
    trunk : float
        Length of the trunk.
    noise : float
        Standard deviation of the isotropic Gaussian noise.

    Returns
    -------
    GraphDataset
        x (N, 1, 2), y (N, 1) in {0, ..., 2 ** class_depth}.
    """
    if not 1 <= class_depth <= depth:
        raise ValueError(f"class_depth must lie in [1, depth = {depth}], got {class_depth}")
    generator = torch.Generator().manual_seed(seed)
    starts, ends, level, position = tree_segments(depth, angle, ratio, trunk)
    subtree = 1 + (position >> (level - class_depth).clamp(min=0))
    branch_class = torch.where(level < class_depth, torch.zeros_like(subtree), subtree)
    lengths = (ends - starts).norm(dim=1)
    num_classes = 1 + 2 ** class_depth
    labels = torch.arange(n) % num_classes
    branch = torch.empty(n, dtype=torch.int64)
    for label in range(num_classes):
        rows = (labels == label).nonzero().squeeze(1)
        members = (branch_class == label).nonzero().squeeze(1)
        if len(rows):
            picked = torch.multinomial(lengths[members], len(rows), replacement=True,
                                       generator=generator)
            branch[rows] = members[picked]
    t = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    on_tree = starts[branch] + t * (ends[branch] - starts[branch])
    corners = torch.cat([starts, ends])
    shift = 0.0 - (corners.min(dim=0).values + corners.max(dim=0).values) / 2  # 0.0: no -0.0
    points = on_tree + shift + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    info = {"n": n, "seed": seed, "depth": depth, "class_depth": class_depth, "angle": angle,
            "ratio": ratio, "trunk": trunk, "noise": noise, "branches": len(starts),
            "shift": shift.tolist(),
            "classes": "0 = branches of levels < class_depth, 1 + i = i-th sub-tree rooted at "
                       "level class_depth, left to right"}
    return _single_node_dataset("tree", points, labels, num_classes, generator, info)
