"""PyTorch Geometric graphs (``Data``, ``Batch``) at the graph door. The one module that imports PyG."""
from __future__ import annotations

import sys
from typing import Any

import torch

from .form import tensor_identity
from .graph import Graph


def to_pyg(graph: Graph) -> Any:
    """``graph`` as a ``torch_geometric.data.Data`` (``edge_index``, ``num_nodes``,
    ``edge_weight`` and, for a batch, ``batch`` and ``ptr``); needs PyTorch Geometric."""
    try:
        from torch_geometric.data import Data
    except ImportError as err:
        raise ImportError("this needs PyTorch Geometric: `pip install 'dgl_iflow[pyg]'`") from err
    data = Data(edge_index=graph.edge_index, num_nodes=graph.num_nodes())
    if graph.edge_weight is not None:
        data.edge_weight = graph.edge_weight
    if graph.batch_size > 1:
        counts = graph.batch_num_nodes()
        data.batch = graph.node_graph_index()
        data.ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return data


class PyGForm:
    """A ``torch_geometric.data.Data`` or ``Batch``: ``edge_index``, ``num_nodes``, optional
    ``edge_weight``, and the node-to-graph ``batch`` vector of a batch."""

    name = "pyg"

    def accepts(self, obj: Any) -> bool:
        data = sys.modules.get("torch_geometric.data")
        return data is not None and isinstance(obj, data.Data)

    def anchor(self, obj: Any) -> Any:
        return obj

    def signature(self, obj: Any) -> tuple:
        return (obj.num_nodes, tensor_identity(obj.edge_index), tensor_identity(getattr(obj, "edge_weight", None)),
                tensor_identity(getattr(obj, "batch", None)), tensor_identity(getattr(obj, "ptr", None)))

    def to_graph(self, obj: Any) -> Graph:
        if obj.edge_index is None:
            raise ValueError("this PyTorch Geometric graph has no edge_index")
        batch, ptr = getattr(obj, "batch", None), getattr(obj, "ptr", None)
        counts = None
        if ptr is not None:  # a Batch: its graphs' node counts, trailing empty graphs included
            counts = ptr.cpu().diff()
        elif batch is not None:
            counts = torch.bincount(batch.cpu(), minlength=int(batch.max()) + 1 if len(batch) else 1)
        return Graph(obj.edge_index[0], obj.edge_index[1], obj.num_nodes, getattr(obj, "edge_weight", None), counts)
