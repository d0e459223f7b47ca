"""Graphs shared by the tests."""
import dgl
import numpy as np
import torch


def path_graph() -> dgl.DGLGraph:
    """Path 0 - 1 - 2, both directions, with a self-loop on every node."""
    return dgl.graph(([0, 1, 1, 2, 0, 1, 2], [1, 0, 2, 1, 0, 1, 2]))


def random_graph(num_nodes: int, avg_degree: float, seed: int, undirected: bool = True) -> dgl.DGLGraph:
    """Random multigraph (duplicates and self-loops allowed), optionally with both directions."""
    rng = np.random.default_rng(seed)
    num_edges = int(avg_degree * num_nodes / (2 if undirected else 1))
    src = rng.integers(0, num_nodes, num_edges)
    dst = rng.integers(0, num_nodes, num_edges)
    if undirected:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    return dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=num_nodes)
