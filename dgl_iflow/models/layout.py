"""The graph-free ("mlp") layout: all node features of a sample as one vector on a one-node graph."""
from __future__ import annotations

from torch import Tensor

from .._backend import dgl


def single_node_graph() -> dgl.DGLGraph:
    """One node with a self-loop: the graph a flattened sample lives on."""
    return dgl.graph(([0], [0]), num_nodes=1)


def flatten_nodes(x: Tensor) -> Tensor:
    """``(V, *, d)`` node features as ``(1, *, V d)``, one vector per sample."""
    return x.movedim(0, -2).reshape(1, *x.shape[1:-1], x.shape[0] * x.shape[-1])


def unflatten_nodes(z: Tensor, num_nodes: int) -> Tensor:
    """Inverse of :func:`flatten_nodes`: ``(1, *, V d)`` to ``(V, *, d)``."""
    return z.reshape(*z.shape[1:-1], num_nodes, z.shape[-1] // num_nodes).movedim(-2, 0)
