"""A plain ``(edge_index, num_nodes)`` pair, or ``(edge_index, num_nodes, edge_weight)``, at the graph door."""
from __future__ import annotations

import numbers
from typing import Any

from torch import Tensor

from .form import tensor_identity
from .graph import Graph


class EdgeIndexForm:
    """``(edge_index, num_nodes[, edge_weight])`` with ``edge_index`` a ``(2, E)`` tensor of
    sources then destinations, as PyTorch Geometric lays edges out. The node count is required:
    it cannot be read off the edges when the last nodes have none."""

    name = "edge_index"

    def accepts(self, obj: Any) -> bool:
        return isinstance(obj, (tuple, list)) and len(obj) in (2, 3) and isinstance(obj[0], Tensor)

    def anchor(self, obj: Any) -> Any:
        return obj[0]

    def signature(self, obj: Any) -> tuple:
        return _node_count(obj[1]), tensor_identity(obj[0]), tensor_identity(obj[2] if len(obj) == 3 else None)

    def to_graph(self, obj: Any) -> Graph:
        edge_index = obj[0]
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        return Graph(edge_index[0], edge_index[1], _node_count(obj[1]), obj[2] if len(obj) == 3 else None)


def _node_count(value: Any) -> int:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"give a graph as (edge_index, num_nodes) with an integer node count, got {value!r}")
    return int(value)
