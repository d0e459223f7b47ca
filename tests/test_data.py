"""Tests of dgl_iflow.data: synthetic constructions, real-data counts and loader robustness."""
from __future__ import annotations

import csv
import importlib
import itertools
import os
import warnings
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from dgl_iflow.data import (DataFileError, GraphDataset, list_datasets, load_dataset,
                            resolve_root, verify_dataset)
from dgl_iflow.data import base
from dgl_iflow.data.base import DataFile, sha256_of
from dgl_iflow.data.solar import ramp_labels
from dgl_iflow.data.synthetic import CHORDAL_DELTA
from dgl_iflow.graphs import as_graph
from graphs import in_degrees

# The package exports the loader functions under the module names, so fetch the modules.
traffic_module = importlib.import_module("dgl_iflow.data.traffic")
solar_module = importlib.import_module("dgl_iflow.data.solar")

SYNTHETIC = ["three_moons", "eight_gaussians", "checkerboard", "rose", "tree", "three_node",
             "chordal"]
SMALL_KWARGS = {"chordal": {"p": 31, "num_label_vectors": 3, "n_per_label": 20}}


def edge_set(graph) -> set[tuple[int, int]]:
    src, dst = graph.edges()
    return set(zip(src.tolist(), dst.tolist()))


def dense_adjacency(graph) -> torch.Tensor:
    """A[dst, src] = 1 for every edge, so row v lists what node v aggregates."""
    adjacency = torch.zeros(graph.num_nodes(), graph.num_nodes(), dtype=torch.float64)
    src, dst = graph.edges()
    adjacency[dst, src] = 1.0
    return adjacency


def check_common(ds: GraphDataset) -> None:
    n, v, d = ds.x.shape
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.y.shape == (n, v) and len(ds) == n
    assert ds.graph.num_nodes() == v == len(ds.node_names) and len(ds.feature_names) == d
    assert int(ds.y.min()) >= 0 and int(ds.y.max()) < ds.num_classes
    assert torch.isfinite(ds.x).all()
    everything = torch.cat([ds.train_idx, ds.test_idx])
    assert ds.train_idx.dtype == ds.test_idx.dtype == torch.int64
    assert torch.equal(everything.sort().values, torch.arange(n)), "split must partition N"
    x_test, y_test = ds.split("test")
    assert torch.equal(x_test, ds.x[ds.test_idx]) and torch.equal(y_test, ds.y[ds.test_idx])
    x0, y0 = ds[0]
    assert x0.shape == (v, d) and y0.shape == (v,)


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    assert list_datasets() == ["three_moons", "eight_gaussians", "checkerboard", "rose", "tree",
                               "three_node", "chordal", "continuous_chordal", "traffic", "solar"]
    with pytest.raises(ValueError, match="three_moons.*solar"):
        load_dataset("two_moons")
    with pytest.raises(ValueError, match="no files"):
        verify_dataset("three_node")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("three_moons", n=10).split("valid")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_common_and_seeded(name):
    kwargs = SMALL_KWARGS.get(name, {})
    first = load_dataset(name, seed=3, **kwargs)
    check_common(first)
    again = load_dataset(name, seed=3, **kwargs)
    other = load_dataset(name, seed=4, **kwargs)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert torch.equal(first.test_idx, again.test_idx)
    assert not torch.equal(first.x, other.x)
    assert first.info["seed"] == 3


# ----------------------------------------------------------------------------- toys
@pytest.mark.parametrize("name, classes", [("three_moons", 3), ("eight_gaussians", 8),
                                           ("checkerboard", 2), ("rose", 6), ("tree", 5)])
def test_toys_single_node_with_self_loop(name, classes):
    ds = load_dataset(name, n=400)
    assert ds.x.shape == (400, 1, 2) and ds.num_classes == classes
    assert edge_set(ds.graph) == {(0, 0)}
    assert set(ds.y.flatten().tolist()) == set(range(classes))
    assert len(ds.test_idx) == pytest.approx(80, abs=classes)


def test_three_moons_imbalance_is_kept_in_both_splits():
    ds = load_dataset("three_moons", n=2000)
    assert torch.bincount(ds.y.flatten()).tolist() == [1000, 600, 400]
    for part in ("train", "test"):
        _, y = ds.split(part)
        shares = torch.bincount(y.flatten()).double() / len(y)
        assert shares.tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.01)
    # Each moon is a noisy unit half-circle: distance to its centre is 1 on average.
    centres = torch.tensor([[0.0, 0.0], [1.25, 0.5], [2.5, 0.0]]) - torch.tensor([1.25, 0.25])
    points = ds.x[:, 0]
    for label in range(3):
        radius = (points[ds.y[:, 0] == label] - centres[label]).norm(dim=1)
        assert radius.mean().item() == pytest.approx(1.0, abs=0.02)


def test_eight_gaussians_components_and_checkerboard_colours():
    gauss = load_dataset("eight_gaussians", n=1600)
    for k in range(8):
        mean = gauss.x[gauss.y[:, 0] == k, 0].mean(dim=0)
        angle = torch.tensor(k * np.pi / 4)
        expected = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)]).float()
        assert torch.allclose(mean, expected, atol=0.05)
    board = load_dataset("checkerboard", n=4000)
    colour = torch.floor(board.x[:, 0] + 2).long().sum(dim=1) % 2
    assert torch.equal(colour, board.y[:, 0])
    assert board.y.float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert board.x.abs().max() <= 2


def test_rose_points_lie_on_their_petal():
    k, radius = 3, 2.0
    # Noise-free: every point is on r = radius |cos(k theta)|, in the petal its angle names.
    exact = load_dataset("rose", n=3000, seed=1, noise=0.0)
    assert exact.num_classes == 2 * k and exact.info["petals"] == 6
    assert torch.bincount(exact.y[:, 0]).tolist() == [500] * 6
    p = exact.x[:, 0].double()
    r, theta = p.norm(dim=1), torch.atan2(p[:, 1], p[:, 0])
    assert (r - radius * torch.cos(k * theta).abs()).abs().max() < 1e-5
    petal = torch.round(theta * k / np.pi).long() % (2 * k)
    away = r > 1e-2  # at the origin the angle is undefined
    assert torch.equal(petal[away], exact.y[away, 0])
    assert r.max() <= radius + 1e-6 and r.max() > 0.99 * radius

    # Noisy: within 6 std of the curve (brute force on a dense curve), petal from the angle
    # away from the centre, where the petals are far apart.
    noise = 0.05
    ds = load_dataset("rose", n=2000, seed=2, noise=noise)
    p = ds.x[:, 0].double()
    grid = torch.linspace(0, 2 * np.pi, 40001, dtype=torch.float64)
    curve = radius * torch.cos(k * grid).abs().unsqueeze(1) * torch.stack(
        [torch.cos(grid), torch.sin(grid)], dim=1)
    spacing = (curve[1:] - curve[:-1]).norm(dim=1).max().item()
    assert torch.cdist(p, curve).min(dim=1).values.max() < 6 * noise + spacing
    r, theta = p.norm(dim=1), torch.atan2(p[:, 1], p[:, 0])
    outer = r > 0.75 * radius
    assert outer.sum() > 500
    petal = torch.round(theta * k / np.pi).long() % (2 * k)
    assert torch.equal(petal[outer], ds.y[outer, 0])
    assert (p.norm(dim=1) - radius * torch.cos(k * theta).abs()).std() > 0.5 * noise
    with pytest.raises(ValueError, match="k must be"):
        load_dataset("rose", k=0)


def reference_tree(depth=7, angle=np.pi / 6, ratio=0.7, trunk=1.2, class_depth=2):
    """Branches (start, end, class) of the documented tree, built recursively, then centred."""
    branches = []

    def grow(start, heading, length, level, position):
        end = start + length * np.array([np.cos(heading), np.sin(heading)])
        if level < class_depth:
            label = 0
        else:
            label = 1 + position // 2 ** (level - class_depth)
        branches.append((start, end, label))
        if level < depth:
            grow(end, heading + angle, length * ratio, level + 1, 2 * position)
            grow(end, heading - angle, length * ratio, level + 1, 2 * position + 1)

    grow(np.zeros(2), np.pi / 2, trunk, 0, 0)
    starts = torch.tensor(np.array([b[0] for b in branches]))
    ends = torch.tensor(np.array([b[1] for b in branches]))
    labels = torch.tensor([b[2] for b in branches])
    corners = torch.cat([starts, ends])
    shift = -(corners.min(dim=0).values + corners.max(dim=0).values) / 2
    return starts + shift, ends + shift, labels, shift


def distance_to_segments(points, starts, ends):
    """(N, S) Euclidean distances from every point to every segment, by brute force."""
    direction = ends - starts
    t = ((points[:, None] - starts[None]) * direction[None]).sum(-1) / (direction ** 2).sum(-1)
    nearest = starts[None] + t.clamp(0, 1)[..., None] * direction[None]
    return (points[:, None] - nearest).norm(dim=-1)


def test_tree_points_lie_on_their_branches():
    starts, ends, branch_label, shift = reference_tree()
    assert len(starts) == 255 and torch.bincount(branch_label).tolist() == [3, 63, 63, 63, 63]
    for noise, tol in ((0.0, 1e-5), (0.02, 6 * 0.02)):
        ds = load_dataset("tree", n=2500, seed=5, noise=noise)
        assert ds.num_classes == 5 and ds.info["branches"] == 255
        assert ds.info["shift"] == pytest.approx(shift.tolist())
        assert torch.bincount(ds.y[:, 0]).tolist() == [500] * 5
        p = ds.x[:, 0].double()
        distance = distance_to_segments(p, starts, ends)
        own = branch_label[None] == ds.y  # (N, S): the branches of each point's class
        assert distance.masked_fill(~own, np.inf).min(dim=1).values.max() < tol
        if noise:
            # Few points are nearer another class than their own (at the forks and tips).
            nearest_label = branch_label[distance.argmin(dim=1)]
            assert (nearest_label == ds.y[:, 0]).float().mean() > 0.9
            assert distance.min(dim=1).values.mean() > 0.3 * noise
    # Sub-trees are numbered left to right and mirror each other; the stem is vertical.
    means = torch.stack([p[ds.y[:, 0] == label].mean(dim=0) for label in range(5)])
    assert means[0, 0].abs() < 0.05 and (means[1:, 0].diff() > 0.3).all()
    assert means[1, 0] == pytest.approx(-means[4, 0].item(), abs=0.1)
    assert p.abs().max(dim=0).values.tolist() == pytest.approx([2.0, 1.8], abs=0.1)
    three = load_dataset("tree", n=300, class_depth=1)
    assert three.num_classes == 3 and set(three.y.flatten().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="class_depth"):
        load_dataset("tree", class_depth=0)


# ----------------------------------------------------------------------------- three-node
def test_three_node_graph_labels_and_closed_form():
    n_per_label = 400
    ds = load_dataset("three_node", n_per_label=n_per_label)
    assert edge_set(ds.graph) == {(0, 0), (1, 1), (2, 2), (0, 1), (1, 0), (1, 2), (2, 1)}
    vectors = Counter(map(tuple, ds.y.tolist()))
    assert vectors == {vec: n_per_label for vec in itertools.product((0, 1), repeat=3)}

    adjacency = dense_adjacency(ds.graph)
    operator = adjacency / adjacency.sum(dim=1, keepdim=True)  # D^{-1} A, rows average
    assert torch.allclose(operator, torch.tensor(ds.info["operator"], dtype=torch.float64))
    assert torch.allclose(operator[1], torch.full((3,), 1 / 3, dtype=torch.float64))

    shifts = torch.tensor([-4.0, 0.0, 4.0], dtype=torch.float64)
    x = ds.x.double()
    latent = torch.einsum("vu,nud->nvd", torch.linalg.inv(operator), x)
    for vec in itertools.product((0, 1), repeat=3):
        rows = (ds.y == torch.tensor(vec)).all(dim=1)
        latent_mean = torch.zeros(3, 2, dtype=torch.float64)
        latent_mean[:, 0] = shifts
        latent_mean[:, 1] = torch.tensor([1.5 if label == 0 else -1.5 for label in vec])
        # Per-node means of X follow in closed form from X = D^{-1} A Z.
        assert torch.allclose(x[rows].mean(dim=0), operator @ latent_mean, atol=0.06)
        # Undoing the operator recovers independent N(mean, 0.1 I) latents per node.
        z = latent[rows]
        assert torch.allclose(z.mean(dim=0), latent_mean, atol=0.06)
        flat = (z - z.mean(dim=0)).reshape(len(z), 6)
        covariance = flat.T @ flat / (len(z) - 1)
        assert torch.allclose(covariance, 0.1 * torch.eye(6, dtype=torch.float64), atol=0.03)


# ----------------------------------------------------------------------------- chordal
def test_chordal_graph_matches_networkx():
    p = 503
    ds = load_dataset("chordal", p=p, num_label_vectors=2, n_per_label=2)
    edges = edge_set(ds.graph)
    assert edges == {(dst, src) for src, dst in edges}, "graph must be symmetric"
    assert {(v, v) for v in range(p)} <= edges
    simple = nx.Graph(nx.chordal_cycle_graph(p))
    simple.remove_edges_from(list(nx.selfloop_edges(simple)))
    expected = torch.tensor([simple.degree(v) + 1 for v in range(p)])
    assert torch.equal(in_degrees(ds.graph), expected)
    assert ds.graph.num_edges() == 2 * simple.number_of_edges() + p
    for bad in (9, 1, 500):
        with pytest.raises(ValueError, match="prime"):
            load_dataset("chordal", p=bad)


def test_chordal_labels_and_mixing():
    p, vectors, per = 31, 4, 300
    ds = load_dataset("chordal", p=p, num_label_vectors=vectors, n_per_label=per, seed=1)
    assert len(ds) == vectors * per and ds.x.shape == (vectors * per, p, 2)
    distinct = torch.unique(ds.y, dim=0)
    assert len(distinct) == vectors
    assert (distinct.sum(dim=1) == p // 2).all()
    adjacency = dense_adjacency(ds.graph)
    mean_of_neighbours = adjacency / adjacency.sum(dim=1, keepdim=True)
    operator = 0.8 * torch.eye(p, dtype=torch.float64) + 0.2 * mean_of_neighbours
    latent = torch.einsum("vu,nud->nvd", torch.linalg.inv(operator), ds.x.double())
    zeros, ones = latent[ds.y == 0], latent[ds.y == 1]
    assert CHORDAL_DELTA == pytest.approx(11.157, abs=1e-3)
    label0_mean = torch.tensor([0.0, CHORDAL_DELTA], dtype=torch.float64)
    assert torch.allclose(zeros.mean(dim=0), label0_mean, atol=0.05)
    assert torch.allclose(ones.mean(dim=0), torch.zeros(2, dtype=torch.float64), atol=0.05)
    assert torch.allclose(ones.std(dim=0), torch.ones(2, dtype=torch.float64), atol=0.05)


# ----------------------------------------------------------------------------- real data
def real_root(folder: str, names: list[str]) -> Path:
    root = os.environ.get("DGL_IFLOW_DATA")
    if not root:
        pytest.skip("DGL_IFLOW_DATA is not set; point it at the data root to run real-data tests")
    missing = [name for name in names if not (Path(root) / folder / name).is_file()]
    if missing:
        pytest.skip(f"{Path(root) / folder} lacks {missing}")
    return Path(root)


@pytest.fixture(scope="module")
def traffic_ds() -> GraphDataset:
    real_root(traffic_module.FOLDER, [f.name for f in traffic_module.FILES])
    return load_dataset("traffic")


@pytest.fixture(scope="module")
def solar_ds() -> GraphDataset:
    real_root(solar_module.FOLDER, [f.name for f in solar_module.FILES])
    return load_dataset("solar")


@pytest.mark.data
def test_traffic_paper_split_counts(traffic_ds):
    check_common(traffic_ds)
    assert traffic_ds.x.shape == (4390, 15, 2)
    assert len(traffic_ds.train_idx) == 3070 and len(traffic_ds.test_idx) == 1320
    _, y_train = traffic_ds.split("train")
    assert torch.bincount(y_train.flatten()).tolist() == [38500, 7550]
    _, y_test = traffic_ds.split("test")
    top = Counter(map(tuple, y_test.tolist())).most_common(3)
    assert top == [((0,) * 15, 552),
                   ((0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1), 85),
                   ((0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1), 65)]
    assert traffic_ds.node_names[:3] == ["248", "318", "173"]


@pytest.mark.data
def test_traffic_graph_and_training_standardization(traffic_ds):
    graph = traffic_ds.graph
    assert graph.num_edges() == 45
    assert (in_degrees(graph) == 3).all()
    assert {(v, v) for v in range(15)} <= edge_set(graph)
    # Sensor 248 aggregates itself and its two nearest sensors, 370 and 282.
    names = traffic_ds.node_names
    src, dst = as_graph(graph).edges()
    src = src[dst == 0]
    assert sorted(names[s] for s in src.tolist()) == ["248", "282", "370"]
    x_train, _ = traffic_ds.split("train")
    assert x_train.mean(dim=0).abs().max() < 0.01
    assert torch.allclose(x_train.std(dim=0), torch.ones(15, 2), atol=0.01)
    # Lag feature of hour t is the current feature of hour t - 1, across the split too.
    assert torch.equal(traffic_ds.x[1:, :, 1], traffic_ds.x[:-1, :, 0])


@pytest.mark.data
def test_traffic_full_split():
    real_root(traffic_module.FOLDER, [f.name for f in traffic_module.FILES])
    full = load_dataset("traffic", subsample=False)
    assert len(full.train_idx) == 6142 and len(full.test_idx) == 2640


@pytest.mark.data
def test_real_checksums_verify():
    real_root(traffic_module.FOLDER, [f.name for f in traffic_module.FILES])
    real_root(solar_module.FOLDER, [f.name for f in solar_module.FILES])
    for name in ("traffic", "solar"):
        reports = verify_dataset(name)
        assert reports and all(report.ok for report in reports.values())


def check_agreement_graph(ds: GraphDataset) -> None:
    """The graph is the brute-force agreement graph of the training labels."""
    edges = edge_set(ds.graph)
    num_nodes = ds.num_nodes
    assert edges == {(dst, src) for src, dst in edges}
    assert (in_degrees(ds.graph) >= 3).all()
    _, y_train = ds.split("train")
    expected = {(v, v) for v in range(num_nodes)}
    for node in range(num_nodes):
        agree = {other: int((y_train[:, node] == y_train[:, other]).sum())
                 for other in range(num_nodes) if other != node}
        for other in sorted(agree, key=lambda o: (-agree[o], o))[:2]:
            expected |= {(node, other), (other, node)}
    assert edges == expected


@pytest.mark.data
def test_solar_week_block_split_graph_and_standardization(solar_ds):
    check_common(solar_ds)
    assert solar_ds.x.shape == (729, 9, 2)
    assert solar_ds.info["split"]["kind"] == "week_blocks"
    # 729 samples = 52 blocks of 14 and one of 1; blocks 3, 7, ..., 51 are the 13 test weeks.
    assert len(solar_ds.train_idx) == 729 - 13 * 14 and len(solar_ds.test_idx) == 13 * 14
    assert len(solar_ds.info["split"]["test_weeks"]) == 13
    assert solar_ds.node_names[0] == "Fremont" and "North San Jose" in solar_ds.node_names
    check_agreement_graph(solar_ds)
    # The scaler is fitted on the training samples' current windows: exactly standard there.
    x_train, _ = solar_ds.split("train")
    assert x_train[:, :, 0].mean(dim=0).abs().max() < 1e-5
    assert torch.allclose(x_train[:, :, 0].std(dim=0, unbiased=False), torch.ones(9), atol=1e-5)


@pytest.mark.data
def test_solar_chronological_split_counts_and_graph():
    real_root(solar_module.FOLDER, [f.name for f in solar_module.FILES])
    ds = load_dataset("solar", split="chronological")
    check_common(ds)
    assert len(ds.train_idx) == 546 and len(ds.test_idx) == 183
    assert torch.equal(ds.train_idx, torch.arange(546))
    check_agreement_graph(ds)
    names = ds.node_names
    assert {tuple(sorted((names[a], names[b]))) for a, b in edge_set(ds.graph) if a < b} == {
        ("Fremont", "Milpitas"), ("Fremont", "Santa Clara"), ("Milpitas", "North San Jose"),
        ("Milpitas", "Santa Clara"), ("Mountain View", "Palo Alto"),
        ("Mountain View", "Redwood City"), ("Mountain View", "San Mateo"),
        ("Mountain View", "Sunnyvale"), ("North San Jose", "Santa Clara"),
        ("Palo Alto", "Redwood City"), ("Palo Alto", "Sunnyvale"),
        ("Redwood City", "San Mateo"), ("Santa Clara", "Sunnyvale")}
    x_train, _ = ds.split("train")
    assert x_train[:, :, 0].mean(dim=0).abs().max() < 0.02
    assert torch.allclose(x_train[:, :, 0].std(dim=0), torch.ones(9), atol=0.02)


@pytest.mark.parametrize("num_samples", [1, 13, 14, 55, 56, 57, 729])
def test_solar_week_blocks_partition_into_alternating_weeks(num_samples):
    train, test = solar_module.split_samples(num_samples, "week_blocks")
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(num_samples))
    assert not set(train) & set(test)
    # Brute force: walk the samples week by week, 3 training weeks then 1 test week.
    expected_test = [i for i in range(num_samples) if (i // 14) % 4 == 3]
    assert test.tolist() == expected_test
    # Each run of test samples is one whole week starting on a block boundary.
    runs = np.split(test, np.flatnonzero(np.diff(test) > 1) + 1) if len(test) else []
    assert all(run[0] % 14 == 0 and len(run) == min(14, num_samples - run[0]) for run in runs)
    full_cycles = num_samples // 56
    assert len(test) >= 14 * full_cycles and len(train) >= 42 * full_cycles


def test_solar_week_blocks_ratio_and_chronological_split():
    train, test = solar_module.split_samples(56 * 10, "week_blocks")
    assert len(train) == 3 * len(test)
    train, test = solar_module.split_samples(729, "chronological")
    # The first floor(3 W / 4) of W = 730 windows, window 0 only a predecessor.
    assert train.tolist() == list(range(546)) and test.tolist() == list(range(546, 729))
    with pytest.raises(ValueError, match="unknown split 'random'.*week_blocks, chronological"):
        solar_module.split_samples(10, "random")


@pytest.mark.data
def test_solar_labels_by_brute_force(solar_ds):
    path = Path(os.environ["DGL_IFLOW_DATA"]) / solar_module.FOLDER / "Palo_Alto_data.csv"
    node = solar_ds.node_names.index("Palo Alto")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    windows: dict[int, list[float]] = {}
    for row in rows:
        day_of_year = (pd.Timestamp(int(row["Year"]), int(row["Month"]), int(row["Day"]))
                       .day_of_year - 1)
        windows.setdefault(2 * day_of_year + int(row["Hour"]) // 12, []).append(float(row["DHI"]))
    for sample in (0, 1, 100, 377, 545, 546, 600, 728):
        now = sum(windows[sample + 1]) / len(windows[sample + 1])
        before = sum(windows[sample]) / len(windows[sample])
        ramp = (now - before) / before > 1 or (now - before) / before < -0.5 or (
            now < 40 and before < 35)
        assert solar_ds.y[sample, node].item() == int(ramp), sample


# ----------------------------------------------------------------------------- robustness
def test_ramp_rule_edge_cases():
    dhi = np.array([[100.0], [250.0], [100.0], [45.0], [30.0], [30.0], [0.0], [0.0], [80.0],
                    [150.0], [35.0], [39.0], [0.0], [0.5]])
    # rise > 1, fall < -0.5, fall of -0.55, x_t < 40 but x_{t-1} = 45, both low, drop to 0,
    # x_{t-1} = 0 twice (no division by zero), moderate rise, fall, x_t < 40 with x_{t-1} = 35
    # (not below 35), drop to 0, tiny value after 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero
        labels = ramp_labels(dhi)
    assert labels[:, 0].tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1]


def test_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DGL_IFLOW_DATA", raising=False)
    default = resolve_root()
    assert default.source == "default" and default.path == tmp_path / "home/.dgl_iflow/data"
    monkeypatch.setenv("DGL_IFLOW_DATA", str(tmp_path / "env"))
    assert resolve_root() == base.DataRoot(tmp_path / "env", "DGL_IFLOW_DATA")
    assert resolve_root(tmp_path / "arg") == base.DataRoot(tmp_path / "arg", "argument")


@pytest.mark.parametrize("name, first_file", [("traffic", traffic_module.FILES[0].name),
                                              ("solar", solar_module.FILES[0].name)])
def test_missing_file_names_file_folder_and_root_source(tmp_path, monkeypatch, name, first_file):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DGL_IFLOW_DATA", str(tmp_path / "env"))
    folder = {"traffic": traffic_module.FOLDER, "solar": solar_module.FOLDER}[name]
    with pytest.raises(DataFileError) as err:
        load_dataset(name, download=False)
    message = str(err.value)
    assert first_file in message and str(tmp_path / "env" / folder) in message
    assert "DGL_IFLOW_DATA" in message and "sha256" in message and "--download" in message
    with pytest.raises(DataFileError, match="from argument"):
        load_dataset(name, root=tmp_path / "arg", download=False)
    monkeypatch.delenv("DGL_IFLOW_DATA")
    with pytest.raises(DataFileError, match=r"\.dgl_iflow/data.*from default"):
        load_dataset(name, download=False)
    assert not (tmp_path / "home").exists(), "loading without download must not create folders"
    reports = verify_dataset(name, root=tmp_path)
    assert {report.status for report in reports.values()} == {"missing"}


# Tiny NSRDB-style files -------------------------------------------------------------
def tiny_solar_frame(days: int, seed: int, minutes: tuple[int, ...] = (30,)) -> pd.DataFrame:
    """Hourly (or finer) DHI whose values are constant within each hour."""
    rng = np.random.default_rng(seed)
    hourly = rng.uniform(0, 300, size=days * 24).round(1)
    stamps = pd.date_range("2018-01-01", periods=days * 24, freq="h")
    rows = [{"Year": t.year, "Month": t.month, "Day": t.day, "Hour": t.hour, "Minute": m,
             "DHI": value, "DNI": 0}
            for t, value in zip(stamps, hourly) for m in minutes]
    return pd.DataFrame(rows)


def write_tiny_solar(folder: Path, names: list[str], days: int = 8) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in enumerate(names):
        path = folder / name
        tiny_solar_frame(days, seed).to_csv(path)  # leading unnamed index, like the real files
        paths.append(path)
    return paths


def test_solar_loader_on_tiny_files(tmp_path):
    folder = tmp_path / solar_module.FOLDER
    write_tiny_solar(folder, ["A_data.csv", "Big_Town_data.csv", "C_data.csv"])
    ds = load_dataset("solar", root=tmp_path, k=2, split="chronological",
                      files=["A_data.csv", "Big_Town_data.csv", "C_data.csv"])
    check_common(ds)
    # 8 days = 16 windows: window 0 has no predecessor, 12 training-period windows.
    assert ds.x.shape == (15, 3, 2) and len(ds.train_idx) == 11 and len(ds.test_idx) == 4
    assert ds.node_names == ["A", "Big Town", "C"]
    frame = tiny_solar_frame(8, 1)
    averages = frame["DHI"].to_numpy().reshape(16, 12).mean(axis=1)
    assert torch.equal(ds.y[:, 1], torch.from_numpy(ramp_labels(averages[:, None])[:, 0]))
    mean, std = averages[:12].mean(), averages[:12].std()
    expected = torch.tensor((averages[1:] - mean) / std, dtype=torch.float32)
    assert torch.allclose(ds.x[:, 1, 0], expected, atol=1e-5)
    assert {(v, v) for v in range(3)} <= edge_set(ds.graph)

    # Half-hourly rows of the same values, stacked in one file with a location column.
    stacked = pd.concat([tiny_solar_frame(8, seed, minutes=(0, 30)).assign(Location=name)
                         for seed, name in enumerate(["A", "Big Town", "C"])])
    stacked.to_csv(tmp_path / "stacked.csv", index=False)
    same = load_dataset("solar", k=2, files=[tmp_path / "stacked.csv"], split="chronological")
    assert same.node_names == ds.node_names
    assert torch.allclose(same.x, ds.x) and torch.equal(same.y, ds.y)
    assert edge_set(same.graph) == edge_set(ds.graph)


@pytest.mark.parametrize("split", ["chronological", "week_blocks"])
def test_solar_next_dhi_targets_on_tiny_files(tmp_path, split):
    paths = write_tiny_solar(tmp_path, ["A_data.csv", "B_data.csv", "C_data.csv"], days=40)
    ramps = load_dataset("solar", k=2, files=paths, split=split)
    ds = load_dataset("solar", k=2, files=paths, split=split, target="next_dhi")
    assert ds.num_classes is None and ds.y.dtype == torch.float32 and ds.info["target"] == "next_dhi"
    assert edge_set(ds.graph) == edge_set(ramps.graph)
    in_test = torch.zeros(len(ramps.x), dtype=torch.bool)
    in_test[ramps.test_idx] = True
    # Kept: the samples whose next sample lies in the same part; the target is that sample's x_t.
    kept = torch.nonzero(in_test[:-1] == in_test[1:]).flatten()
    assert torch.equal(ds.x, ramps.x[kept]) and torch.equal(ds.y, ramps.x[kept + 1, :, 0])
    assert torch.equal(ds.test_idx, torch.nonzero(in_test[kept]).flatten())
    assert len(ds.train_idx) + len(ds.test_idx) == len(ds.x) < len(ramps.x)


def test_solar_week_blocks_on_tiny_files_use_training_windows_only(tmp_path):
    # 30 days = 60 windows = 59 samples: weeks 0-2 and the start of week 4 train, week 3 tests.
    frames = [tiny_solar_frame(30, seed) for seed in range(3)]
    for frame, name in zip(frames, "ABC"):
        frame.to_csv(tmp_path / f"{name}_data.csv")
    files = [tmp_path / f"{name}_data.csv" for name in "ABC"]
    ds = load_dataset("solar", k=2, files=files)
    check_common(ds)
    test = list(range(42, 56))
    assert ds.test_idx.tolist() == test
    assert ds.train_idx.tolist() == [i for i in range(59) if i not in test]
    # Scaler: mean and std (ddof 0) of the training samples' current windows, by hand.
    averages = frames[1]["DHI"].to_numpy().reshape(60, 12).mean(axis=1)
    fit = averages[ds.train_idx.numpy() + 1]
    expected = torch.tensor((averages[1:] - fit.mean()) / fit.std(), dtype=torch.float32)
    assert torch.allclose(ds.x[:, 1, 0], expected, atol=1e-5)
    # The lag of the first test sample is the last training window, kept as it is.
    assert ds.x[42, 1, 1] == ds.x[41, 1, 0]

    # Change every test-part window except each test week's last (the next training sample's
    # lag): training features, training labels, scaler and graph must not move.
    for frame in frames:
        hours = np.concatenate([np.arange(12 * (i + 1), 12 * (i + 2)) for i in test[:-1]])
        frame.loc[hours, "DHI"] = frame.loc[hours, "DHI"] * 3.0 + 50.0
        frame.to_csv(tmp_path / f"changed_{len(list(tmp_path.iterdir()))}_data.csv")
    changed_files = sorted(tmp_path.glob("changed_*_data.csv"))
    changed = load_dataset("solar", k=2, files=changed_files)
    x_train, y_train = ds.split("train")
    x_train_changed, y_train_changed = changed.split("train")
    assert torch.equal(x_train, x_train_changed) and torch.equal(y_train, y_train_changed)
    assert changed.info["scaler"]["mean"] == ds.info["scaler"]["mean"]
    assert edge_set(changed.graph) == edge_set(ds.graph)
    assert not torch.equal(ds.split("test")[0], changed.split("test")[0])

    with pytest.raises(DataFileError, match="too few to split.*0 test samples"):
        load_dataset("solar", k=2, files=write_tiny_solar(tmp_path / "short", ["D_data.csv",
                                                                              "E_data.csv"]))
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("solar", k=2, files=files, split="random")


def test_solar_reads_raw_nsrdb_header(tmp_path):
    path = tmp_path / "Site_data.csv"
    with open(path, "w") as handle:
        handle.write("Source,Location ID,City\nNSRDB,123,Somewhere\n")
        tiny_solar_frame(8, 0).to_csv(handle, index=False)
    other = write_tiny_solar(tmp_path, ["Other_data.csv"])
    ds = load_dataset("solar", root=tmp_path, k=2, files=[path, other[0]], split="chronological")
    assert ds.node_names == ["Site", "Other"] and ds.x.shape == (15, 2, 2)


def test_solar_checksums_on_tiny_real_format_files(tmp_path, monkeypatch):
    folder = tmp_path / solar_module.FOLDER
    paths = write_tiny_solar(folder, ["A_data.csv", "B_data.csv", "C_data.csv"])
    specs = tuple(DataFile(p.name, p.stat().st_size, sha256_of(p)) for p in paths)
    monkeypatch.setattr(solar_module, "FILES", specs)
    assert load_dataset("solar", root=tmp_path, k=2, split="chronological").x.shape == (15, 3, 2)

    content = paths[1].read_bytes()
    paths[1].write_bytes(content[:-40])
    with pytest.raises(DataFileError, match="B_data.csv.*bytes.*expected") as err:
        load_dataset("solar", root=tmp_path, k=2)
    assert str(folder) in str(err.value) and "from argument" in str(err.value)
    assert verify_dataset("solar", root=tmp_path)["B_data.csv"].status == "size mismatch"

    corrupted = bytearray(content)
    corrupted[-5] = ord("7") if corrupted[-5] != ord("7") else ord("8")
    paths[1].write_bytes(bytes(corrupted))
    with pytest.raises(DataFileError, match="B_data.csv.*corrupted.*sha256"):
        load_dataset("solar", root=tmp_path, k=2)
    assert verify_dataset("solar", root=tmp_path)["B_data.csv"].status == "checksum mismatch"
    # verify=False accepts a changed file in the same format.
    assert load_dataset("solar", root=tmp_path, k=2, verify=False,
                        split="chronological").x.shape == (15, 3, 2)


def test_solar_malformed_csv_names_file_and_columns(tmp_path, monkeypatch):
    folder = tmp_path / solar_module.FOLDER
    paths = write_tiny_solar(folder, ["A_data.csv", "B_data.csv"])
    pd.read_csv(paths[1]).drop(columns="DHI").to_csv(paths[1], index=False)
    monkeypatch.setattr(solar_module, "FILES",
                        tuple(DataFile(p.name, 0, "") for p in paths))
    with pytest.raises(DataFileError) as err:
        load_dataset("solar", root=tmp_path, k=2, verify=False)
    message = str(err.value)
    assert "B_data.csv" in message and str(folder) in message
    assert "['DHI']" in message and "Year" in message


def test_solar_rejects_incomplete_windows(tmp_path):
    paths = write_tiny_solar(tmp_path, ["A_data.csv", "B_data.csv"])
    pd.read_csv(paths[0]).drop(index=30).to_csv(paths[0], index=False)
    with pytest.raises(DataFileError, match="A_data.csv.*complete windows"):
        load_dataset("solar", k=2, files=paths)


# Tiny traffic pickles ---------------------------------------------------------------
def write_tiny_traffic(folder: Path, train_hours: int = 20, test_hours: int = 10) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    sensors = [11, 7, 5, 3]
    hours = pd.date_range("2020-01-01", periods=train_hours + test_hours, freq="h",
                          name="Timestamp")
    flow = np.arange(len(hours) * 4, dtype=np.float64).reshape(-1, 4) ** 1.5
    raw_labels = np.tile([0.0, 1.0, 2.0, 1.0], (len(hours), 1))
    frames = {
        traffic_module.TRAIN_FLOW.name: pd.DataFrame(flow[:train_hours], hours[:train_hours],
                                                     sensors),
        traffic_module.TEST_FLOW.name: pd.DataFrame(flow[train_hours:], hours[train_hours:],
                                                    sensors),
        traffic_module.LABELS.name: pd.DataFrame(raw_labels, hours, sensors),
    }
    for name, frame in frames.items():
        frame.to_pickle(folder / name)
    neighbors = {11: np.array([11, 99, 3, 7, 5]), 7: np.array([7, 5, 3, 11]),
                 5: np.array([5, 7, 11, 3]), 3: np.array([3, 11, 5, 7])}
    pd.to_pickle(neighbors, folder / traffic_module.NEIGHBORS.name)
    return frames


def test_traffic_loader_on_tiny_files(tmp_path):
    frames = write_tiny_traffic(tmp_path / traffic_module.FOLDER)
    ds = load_dataset("traffic", root=tmp_path, verify=False)
    check_common(ds)
    # Last 10 of 20 training hours give 9 samples; first 5 of 10 test hours give 5.
    assert len(ds.train_idx) == 9 and len(ds.test_idx) == 5
    assert ds.node_names == ["11", "7", "5", "3"]
    assert ds.y[0].tolist() == [0, 1, 0, 1], "raw label 2 must become 0"
    # Sensor 11 skips the unknown id 99 and takes 3; in-degree 3 everywhere.
    assert edge_set(ds.graph) == {(0, 0), (3, 0), (1, 0), (1, 1), (2, 1), (3, 1),
                                  (2, 2), (1, 2), (0, 2), (3, 3), (0, 3), (2, 3)}
    flow = frames[traffic_module.TRAIN_FLOW.name].to_numpy()
    fitted = flow[10:]  # the last 10 training hours, both lags use their statistics
    expected = (flow[11:] - fitted.mean(axis=0)) / fitted.std(axis=0)
    x_train, _ = ds.split("train")
    assert torch.allclose(x_train[:, :, 0], torch.tensor(expected, dtype=torch.float32))
    full = load_dataset("traffic", root=tmp_path, verify=False, subsample=False)
    assert len(full.train_idx) == 19 and len(full.test_idx) == 10


def test_traffic_next_flow_targets_on_tiny_files(tmp_path):
    write_tiny_traffic(tmp_path / traffic_module.FOLDER)
    classes = load_dataset("traffic", root=tmp_path, verify=False)
    ds = load_dataset("traffic", root=tmp_path, verify=False, target="next_flow")
    assert ds.num_classes is None and ds.y.dtype == torch.float32 and ds.info["target"] == "next_flow"
    # Each part loses its last hour, whose next hour is not its own.
    assert len(ds.train_idx) == 8 and len(ds.test_idx) == 4
    for part in ("train", "test"):
        x, y = ds.split(part)
        x_classes, _ = classes.split(part)
        assert torch.equal(x, x_classes[:-1])
        # The target of hour t is the standardized flow_t feature of hour t + 1.
        assert torch.equal(y, x_classes[1:, :, 0])
    with pytest.raises(ValueError, match="target must be one of"):
        load_dataset("traffic", root=tmp_path, verify=False, target="flow")


def test_traffic_checksums_and_malformed_files(tmp_path):
    folder = tmp_path / traffic_module.FOLDER
    frames = write_tiny_traffic(folder)
    with pytest.raises(DataFileError, match="flow_frame_train.*bytes.*expected 787481 bytes"):
        load_dataset("traffic", root=tmp_path)
    # Same size as the published neighbour file but other bytes: a checksum mismatch.
    (folder / traffic_module.NEIGHBORS.name).write_bytes(b"\0" * traffic_module.NEIGHBORS.size)
    assert verify_dataset("traffic", root=tmp_path)[traffic_module.NEIGHBORS.name].status == (
        "checksum mismatch")
    with pytest.raises(DataFileError, match="sensor_neighbors.p.*could not be read"):
        load_dataset("traffic", root=tmp_path, verify=False)
    write_tiny_traffic(folder)
    labels = frames[traffic_module.LABELS.name]
    labels.iloc[:-1].to_pickle(folder / traffic_module.LABELS.name)
    with pytest.raises(DataFileError, match="true_anomalies.p.*one row per hour"):
        load_dataset("traffic", root=tmp_path, verify=False)
    labels.iloc[:, :3].to_pickle(folder / traffic_module.LABELS.name)
    with pytest.raises(DataFileError, match="true_anomalies.p.*expected the sensor columns"):
        load_dataset("traffic", root=tmp_path, verify=False)


def test_holdout_partitions_the_samples_by_seed():
    from dgl_iflow.data import holdout

    x = torch.arange(40, dtype=torch.float32).reshape(10, 2, 2)
    y = torch.arange(20).reshape(10, 2)
    (x_kept, y_kept), (x_held, y_held) = holdout(x, y, 0.3, seed=4)
    assert len(x_held) == 3 and len(x_kept) == 7
    rows = sorted(int(v) for v in torch.cat([y_kept[:, 0], y_held[:, 0]]))
    assert rows == list(range(0, 20, 2))  # a partition of the samples, features and labels together
    assert torch.equal(x_held[:, 0, 0], 2 * y_held[:, 0].float())
    assert torch.equal(holdout(x, y, 0.3, seed=4)[1][1], y_held)
    assert not torch.equal(holdout(x, y, 0.3, seed=5)[1][1], y_held)
    assert len(holdout(x, y, 0.01, seed=0)[1][0]) == 1
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        holdout(x, y, 1.0, seed=0)
