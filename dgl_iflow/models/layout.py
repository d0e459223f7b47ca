"""The one conversion between the models' sample-first layout and the transforms' node-first one."""
from __future__ import annotations

from torch import Tensor

from ..graphs import Graph


def single_node_graph() -> Graph:
    """One node with a self-loop: the graph a flattened sample lives on."""
    return Graph([0], [0], num_nodes=1)


def to_nodes_first(x: Tensor, flatten: bool = False) -> Tensor:
    """Sample-first ``(N, V, d)`` as the transforms' node-first ``(V, N, d)``.

    With ``flatten`` (the graph-free layout) every sample becomes one vector on one node:
    ``(1, N, V d)``.
    """
    if flatten:
        return x.reshape(1, *x.shape[:-2], x.shape[-2] * x.shape[-1])
    return x.movedim(-2, 0)


def to_samples_first(z: Tensor, num_nodes: int, flatten: bool = False) -> Tensor:
    """Inverse of :func:`to_nodes_first`: ``(V, N, d)`` (or ``(1, N, V d)``) to ``(N, V, d)``."""
    if flatten:
        return z.reshape(*z.shape[1:-1], num_nodes, z.shape[-1] // num_nodes)
    return z.movedim(0, -2)
