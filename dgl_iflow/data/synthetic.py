"""Simulated graph data sets where X | Y is known in closed form.

All follow the paper's recipe: draw a latent Z_v | Y_v per node from a Gaussian whose mean
depends on the node's label, then mix neighbours with a fixed graph operator, X = P Z. In
``continuous_chordal`` the labels are real numbers and the latent mean is linear in them.
"""
from __future__ import annotations

import itertools
from statistics import NormalDist

import networkx as nx
import torch
from torch import Tensor

from .base import GraphDataset, stratified_split, undirected_graph

TEST_FRACTION = 0.2
FEATURE_NAMES = ["x1", "x2"]

#: Latent means of the three-node data: label 0 above the axis, label 1 below.
THREE_NODE_MEANS = ((0.0, 1.5), (0.0, -1.5))
THREE_NODE_VARIANCE = 0.1
#: Shift of the first latent coordinate per node, which separates the three nodes.
THREE_NODE_SHIFTS = (-4.0, 0.0, 4.0)
#: Latent mean offset of label-0 nodes in the chordal data: 3 Phi^{-1}(0.9999), about 11.16.
CHORDAL_DELTA = 3.0 * NormalDist().inv_cdf(0.9999)
#: Weight of a node's own latent value in the chordal mixing operator 0.8 I + 0.2 D^{-1} A.
CHORDAL_SELF_WEIGHT = 0.8
#: The map B of the continuous chordal data, Z_v | Y_v = y ~ N(B y, I): of norm 3, so that the
#: targets a prior standard deviation apart lie three noise standard deviations apart.
CONTINUOUS_CHORDAL_LOADING = (2.4, 1.8)


def row_normalized_adjacency(graph_pairs: list[tuple[int, int]], num_nodes: int) -> Tensor:
    """D^{-1} A for the undirected graph on ``graph_pairs`` with a self-loop on every node.

    Returns
    -------
    Tensor
        Shape (V, V), float64; row v averages node v and its neighbours.
    """
    adjacency = torch.eye(num_nodes, dtype=torch.float64)
    for u, v in graph_pairs:
        adjacency[u, v] = adjacency[v, u] = 1.0
    return adjacency / adjacency.sum(dim=1, keepdim=True)


def _mix(operator: Tensor, latent: Tensor) -> Tensor:
    """X = P Z applied per sample: (V, V) operator, (N, V, d) latent -> (N, V, d)."""
    return torch.einsum("vu,nud->nvd", operator, latent)


def three_node(n_per_label: int = 500, seed: int = 0) -> GraphDataset:
    """Path graph 0 - 1 - 2 with self-loops; every label vector in {0, 1}^3.

    Latent Z_v | Y_v ~ N(mu(Y_v), 0.1 I) with mu(0) = (0, +1.5) and mu(1) = (0, -1.5); then
    Z's first coordinate is shifted by -4 on node 0 and +4 on node 2, and X = D^{-1} A Z with A
    the adjacency including self-loops, so each node averages itself and its neighbours.
    Samples are ordered by label vector (0,0,0), (0,0,1), ..., (1,1,1), ``n_per_label`` each.

    Parameters
    ----------
    n_per_label : int
        Samples per label vector; N = 8 * n_per_label.
    seed : int
        Seed of the ``torch.Generator`` used for sampling and for the split.

    Returns
    -------
    GraphDataset
        x (N, 3, 2), y (N, 3) in {0, 1}; ``info["operator"]`` holds D^{-1} A.
    """
    generator = torch.Generator().manual_seed(seed)
    path = [(0, 1), (1, 2)]
    label_vectors = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.int64)
    labels = label_vectors.repeat_interleave(n_per_label, dim=0)
    means = torch.tensor(THREE_NODE_MEANS, dtype=torch.float64)[labels]
    means[:, :, 0] += torch.tensor(THREE_NODE_SHIFTS, dtype=torch.float64)
    noise = torch.randn(means.shape, generator=generator, dtype=torch.float64)
    latent = means + THREE_NODE_VARIANCE ** 0.5 * noise
    operator = row_normalized_adjacency(path, 3)
    groups = torch.arange(8).repeat_interleave(n_per_label)
    train_idx, test_idx = stratified_split(groups, TEST_FRACTION, generator)
    info = {"n_per_label": n_per_label, "seed": seed, "latent_means": THREE_NODE_MEANS,
            "latent_variance": THREE_NODE_VARIANCE, "first_coordinate_shifts": THREE_NODE_SHIFTS,
            "operator": operator.tolist(), "test_fraction": TEST_FRACTION,
            "split": "stratified by label vector"}
    return GraphDataset(
        name="three_node", graph=undirected_graph(path, 3, self_loops=True),
        x=_mix(operator, latent), y=labels, train_idx=train_idx, test_idx=test_idx,
        num_classes=2, node_names=["0", "1", "2"], feature_names=list(FEATURE_NAMES), info=info)


def _is_prime(p: int) -> bool:
    divisors = range(2, int(p ** 0.5) + 1) if isinstance(p, int) else ()
    return isinstance(p, int) and p >= 2 and all(p % divisor for divisor in divisors)


def chordal_cycle_pairs(p: int) -> list[tuple[int, int]]:
    """Distinct undirected non-loop edges of ``networkx.chordal_cycle_graph(p)``.

    networkx returns a multigraph with repeated edges and some self-loops; both are dropped
    here because the data set adds exactly one self-loop per node itself.
    """
    simple = nx.Graph(nx.chordal_cycle_graph(p))
    return sorted((min(u, v), max(u, v)) for u, v in simple.edges() if u != v)


def chordal_mixing_operator(p: int) -> Tensor:
    """The chordal data's mixing operator M = 0.8 I + 0.2 D^{-1} A, with A including self-loops.

    Given the labels, the data are X = M Z with Z's within-class covariance I, so
    Cov(X | Y) = (M M^T) kron I_d for every label vector and E[X | Y] = M E[Z | Y].

    Parameters
    ----------
    p : int
        Number of nodes; must be prime.

    Returns
    -------
    Tensor
        Shape (p, p), float64.
    """
    if not _is_prime(p):
        raise ValueError(f"chordal_cycle_graph needs a prime number of nodes, got p = {p}")
    return (CHORDAL_SELF_WEIGHT * torch.eye(p, dtype=torch.float64)
            + (1 - CHORDAL_SELF_WEIGHT) * row_normalized_adjacency(chordal_cycle_pairs(p), p))


def chordal(p: int = 503, num_label_vectors: int = 10, n_per_label: int = 100,
            seed: int = 0) -> GraphDataset:
    """Expander-like chordal cycle graph on p nodes (p prime) with self-loops.

    Latent Z_v | Y_v = 0 ~ N((0, delta), I) with delta = 3 Phi^{-1}(0.9999) and
    Z_v | Y_v = 1 ~ N(0, I); X = (0.8 I + 0.2 D^{-1} A) Z with A including self-loops. Each of
    the ``num_label_vectors`` label vectors sets exactly floor(p / 2) random nodes to 1.
    Samples are ordered by label vector, ``n_per_label`` each.

    Parameters
    ----------
    p : int
        Number of nodes V; must be prime (the graph is only defined for primes).
    num_label_vectors : int
        Number of random label vectors drawn.
    n_per_label : int
        Samples per label vector; N = num_label_vectors * n_per_label.
    seed : int
        Seed of the ``torch.Generator`` used for labels, sampling and the split.

    Returns
    -------
    GraphDataset
        x (N, p, 2), y (N, p) in {0, 1}; ``info["label_vectors"]`` lists the drawn vectors.
    """
    operator = chordal_mixing_operator(p)
    generator = torch.Generator().manual_seed(seed)
    label_vectors = torch.zeros(num_label_vectors, p, dtype=torch.int64)
    for row in label_vectors:
        row[torch.randperm(p, generator=generator)[: p // 2]] = 1
    labels = label_vectors.repeat_interleave(n_per_label, dim=0)
    latent = torch.randn(labels.shape + (2,), generator=generator, dtype=torch.float64)
    latent[:, :, 1] += CHORDAL_DELTA * (labels == 0)
    pairs = chordal_cycle_pairs(p)
    groups = torch.arange(num_label_vectors).repeat_interleave(n_per_label)
    train_idx, test_idx = stratified_split(groups, TEST_FRACTION, generator)
    info = {"p": p, "num_label_vectors": num_label_vectors, "n_per_label": n_per_label,
            "seed": seed, "delta": CHORDAL_DELTA, "self_weight": CHORDAL_SELF_WEIGHT,
            "label_vectors": label_vectors.tolist(), "test_fraction": TEST_FRACTION,
            "split": "stratified by label vector"}
    return GraphDataset(
        name="chordal", graph=undirected_graph(pairs, p, self_loops=True),
        x=_mix(operator, latent), y=labels, train_idx=train_idx, test_idx=test_idx,
        num_classes=2, node_names=[str(v) for v in range(p)],
        feature_names=list(FEATURE_NAMES), info=info)


def continuous_chordal(p: int = 31, n: int = 2000, prior_std: float = 1.0, seed: int = 0) -> GraphDataset:
    r"""The chordal graph with one real-valued target per node, and X | Y Gaussian in closed form.

    Every node's target is drawn from its prior, :math:`Y_v \sim N(0, s^2)` independently, then
    :math:`Z_v \mid Y_v = y \sim N(B y, I_2)` with :math:`B` = ``CONTINUOUS_CHORDAL_LOADING``,
    and :math:`X = M Z` with the chordal mixing operator :math:`M` (:func:`chordal_mixing_operator`).
    Hence :math:`X \mid Y = y` is Gaussian (:func:`continuous_chordal_moments`) and so is
    :math:`Y \mid X` (:func:`continuous_chordal_posterior_mean`).

    Parameters
    ----------
    p : int
        Number of nodes V; must be prime.
    n : int
        Number of samples N.
    prior_std : float
        :math:`s`, the standard deviation of every target.
    seed : int
        Seed of the ``torch.Generator`` used for targets, sampling and the split.

    Returns
    -------
    GraphDataset
        x (N, p, 2), y (N, p) float32 targets, ``num_classes`` None; a random 20 % test split.
    """
    if not (prior_std > 0.0):
        raise ValueError(f"prior_std must be positive, got {prior_std}")
    operator = chordal_mixing_operator(p)
    generator = torch.Generator().manual_seed(seed)
    targets = prior_std * torch.randn(n, p, generator=generator, dtype=torch.float64)
    latent = (targets.unsqueeze(-1) * torch.tensor(CONTINUOUS_CHORDAL_LOADING, dtype=torch.float64)
              + torch.randn(n, p, 2, generator=generator, dtype=torch.float64))
    # One group: a plain random split, seeded like the rest.
    train_idx, test_idx = stratified_split(torch.zeros(n, dtype=torch.int64), TEST_FRACTION, generator)
    info = {"p": p, "n": n, "prior_std": prior_std, "seed": seed, "loading": CONTINUOUS_CHORDAL_LOADING,
            "self_weight": CHORDAL_SELF_WEIGHT, "test_fraction": TEST_FRACTION, "split": "random"}
    return GraphDataset(
        name="continuous_chordal", graph=undirected_graph(chordal_cycle_pairs(p), p, self_loops=True),
        x=_mix(operator, latent), y=targets, train_idx=train_idx, test_idx=test_idx, num_classes=None,
        node_names=[str(v) for v in range(p)], feature_names=list(FEATURE_NAMES), info=info)


def continuous_chordal_moments(p: int, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""The exact mean and covariance of :math:`X \mid Y = y` in :func:`continuous_chordal`.

    :math:`E[X \mid y] = M y B^\top` and :math:`\mathrm{Cov}(\mathrm{vec}\, X \mid y) = (M M^\top)
    \otimes I_2`, with ``vec`` stacking the nodes' rows (the layout of ``x.flatten(-2)``).

    Parameters
    ----------
    p : int
        Number of nodes V (prime).
    y : Tensor
        (V,) targets.

    Returns
    -------
    mean, covariance : Tensor
        (V, 2) and (2 V, 2 V), float64.
    """
    operator = chordal_mixing_operator(p)
    loading = torch.tensor(CONTINUOUS_CHORDAL_LOADING, dtype=torch.float64)
    mean = (operator @ y.to(torch.float64)).unsqueeze(-1) * loading
    return mean, torch.kron(operator @ operator.T, torch.eye(2, dtype=torch.float64))


def continuous_chordal_posterior_mean(p: int, x: Tensor, prior_std: float = 1.0) -> Tensor:
    r"""The exact :math:`E[Y \mid X]` of :func:`continuous_chordal`, ``(N, V)`` for ``x`` ``(N, V, 2)``.

    :math:`W = M^{-1} X` has rows :math:`W_v = B Y_v + Z_v`, independent over nodes given the
    targets, so :math:`Y_v \mid X` depends on :math:`W_v` alone and is conjugate:
    :math:`E[Y_v \mid X] = B^\top W_v / (s^{-2} + \lVert B \rVert^2)`, of variance
    :math:`1 / (s^{-2} + \lVert B \rVert^2)` (:func:`continuous_chordal_posterior_std`).
    """
    operator = chordal_mixing_operator(p)
    loading = torch.tensor(CONTINUOUS_CHORDAL_LOADING, dtype=torch.float64)
    unmixed = torch.linalg.solve(operator, x.to(torch.float64))  # batched over N
    return unmixed @ loading * continuous_chordal_posterior_std(prior_std) ** 2


def continuous_chordal_posterior_std(prior_std: float = 1.0) -> float:
    """The exact standard deviation of every :math:`Y_v \\mid X` in :func:`continuous_chordal`."""
    squared_norm = sum(b * b for b in CONTINUOUS_CHORDAL_LOADING)
    return (1.0 / prior_std**2 + squared_norm) ** -0.5
