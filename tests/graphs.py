"""Graphs, data and brute-force references shared by the tests."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

import pytest

from dgl_iflow.graphs import Graph, as_graph, dgl_available

#: For the tests of DGL itself (its graph objects, its functions); everything else runs without it.
requires_dgl = pytest.mark.skipif(not dgl_available(), reason="needs DGL itself: pip install 'dgl_iflow[dgl]'")


def make_graph(edges: tuple, num_nodes: int | None = None) -> Graph:
    """The graph of ``edges = (src, dst)``, called as ``dgl.graph`` is."""
    return Graph(*edges, num_nodes=num_nodes)


def in_degrees(graph) -> torch.Tensor:
    """In-degree of every node ``(V,)`` of a graph of any form."""
    graph = as_graph(graph)
    return torch.bincount(graph.edges()[1], minlength=graph.num_nodes())


def path_graph() -> Graph:
    """Path 0 - 1 - 2, both directions, with a self-loop on every node."""
    return make_graph(([0, 1, 1, 2, 0, 1, 2], [1, 0, 2, 1, 0, 1, 2]))


def line_graph(num_nodes: int = 4) -> Graph:
    """Path 0 - 1 - ... - (V - 1), both directions, without self-loops."""
    src = torch.arange(num_nodes - 1)
    return make_graph((torch.cat([src, src + 1]), torch.cat([src + 1, src])), num_nodes=num_nodes)


def cycle_graph(num_nodes: int = 5, self_loops: bool = False) -> Graph:
    """Cycle on ``num_nodes`` nodes, both directions (``v -> v + 1`` first), optionally with self-loops."""
    src = torch.arange(num_nodes)
    dst = (src + 1) % num_nodes
    srcs, dsts = [src, dst], [dst, src]
    if self_loops:
        srcs.append(src)
        dsts.append(src)
    return make_graph((torch.cat(srcs), torch.cat(dsts)), num_nodes=num_nodes)


def single_node_graph() -> Graph:
    """One node with a self-loop."""
    return make_graph(([0], [0]), num_nodes=1)


def random_graph(num_nodes: int, avg_degree: float, seed: int, undirected: bool = True) -> Graph:
    """Random multigraph (duplicates and self-loops allowed), optionally with both directions."""
    rng = np.random.default_rng(seed)
    num_edges = int(avg_degree * num_nodes / (2 if undirected else 1))
    src = rng.integers(0, num_nodes, num_edges)
    dst = rng.integers(0, num_nodes, num_edges)
    if undirected:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    return make_graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=num_nodes)


def toy_data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples on the 3 nodes of :func:`path_graph`: labels ``(n, 3)`` in {0, 1}, features
    ``(n, 3, 2)`` near ``(0, 2 y - 1)`` with noise 0.3, sample-first as the models take them."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n, 3), generator=generator)
    x = torch.stack([torch.zeros_like(y, dtype=torch.float32), 2.0 * y - 1.0], -1)
    return x + 0.3 * torch.randn(x.shape, generator=generator), y


def brute_force_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, samples_first: bool = False,
) -> torch.Tensor:
    """Per-sample Jacobians ``(*, V D, V D)`` of ``fn`` at ``x``, by ``torch.autograd.functional.jacobian``
    on the whole input; asserts that samples do not interact.

    ``x`` is node-first ``(V, *, D)``, as the transforms and layers take it, or sample-first
    ``(*, V, D)``, as the models take it, with ``samples_first``; ``fn`` maps it to a tensor of
    the same layout and shape. Rows and columns are node-major: ``v * D + c``.
    """
    if samples_first:
        nodes_first = x.movedim(-2, 0)
        return brute_force_jacobian(lambda z: fn(z.movedim(0, -2)).movedim(-2, 0), nodes_first)
    num_nodes, feats = x.shape[0], x.shape[-1]
    batch = x.shape[1:-1]
    samples = int(np.prod(batch, dtype=np.int64))
    full = torch.autograd.functional.jacobian(fn, x)  # (V, *, D, V, *, D)
    flat = full.reshape(num_nodes, samples, feats, num_nodes, samples, feats)
    per_sample = torch.stack([flat[:, s, :, :, s, :] for s in range(samples)])
    off = flat.clone()
    for s in range(samples):
        off[:, s, :, :, s, :] = 0
    assert off.abs().max() == 0  # samples do not interact
    return per_sample.reshape(*batch, num_nodes * feats, num_nodes * feats)


def flat_state(state: dict) -> dict[str, object]:
    """A state dict with the modules' extra state (dicts, of tensors or plain values) flattened
    into ``name.key`` entries, so that every entry compares on its own."""
    flat = {}
    for name, value in state.items():
        if isinstance(value, dict):
            flat.update(flat_state({f"{name}.{key}": item for key, item in value.items()}))
        else:
            flat[name] = value
    return flat
