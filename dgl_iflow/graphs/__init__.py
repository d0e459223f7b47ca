"""The graph door: every graph the library is given comes through :func:`as_graph`.

A graph is what the layers need to know of it: a node count, edges with optional weights and,
for a batch, the node counts of its graphs (:class:`Graph`). Users hold graphs in several
forms: a DGL graph (``dgl.batch`` included), a PyTorch Geometric ``Data`` or ``Batch``, an
``(edge_index, num_nodes)`` pair, or a :class:`Graph`. Every public layer, transform, model,
trainer and demo takes any of them and gives the same numbers for the same graph and weights.

This package is the only place that imports DGL or PyTorch Geometric, and only when a graph
of theirs arrives or one is asked for (:func:`graph_from_edges`, :func:`to_dgl`,
:func:`to_pyg`). A new form is one module with a :class:`~dgl_iflow.graphs.form.GraphForm`
and one line in :data:`GRAPH_FORMS`.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Union

from torch import Tensor

from .dgl_form import DGLForm, dgl_available, import_dgl, to_dgl
from .edge_index_form import EdgeIndexForm
from .form import GraphForm, same_signature
from .graph import Graph, batch
from .pyg_form import PyGForm, to_pyg

if TYPE_CHECKING:
    import dgl
    import torch_geometric

#: Any graph the library takes.
GraphLike = Union[Graph, "dgl.DGLGraph", "torch_geometric.data.Data", tuple[Tensor, int], tuple[Tensor, int, Tensor]]

#: Name -> form, tried in this order; a :class:`Graph` passes as it is.
GRAPH_FORMS: dict[str, GraphForm] = {
    "dgl": DGLForm(),
    "pyg": PyGForm(),
    "edge_index": EdgeIndexForm(),
}

# id(anchor) -> (anchor held weakly, signature, its Graph).
_converted: dict[int, tuple[weakref.ref, tuple, Graph]] = {}


def as_graph(graph: GraphLike) -> Graph:
    """``graph`` as the library's :class:`Graph`.

    The conversion is remembered while the given graph lives and is not edited, so the same
    graph always gives the same :class:`Graph` object, on which layers keep their operators.

    Raises
    ------
    TypeError
        In one line, for an object of none of the forms in :data:`GRAPH_FORMS`.
    """
    if isinstance(graph, Graph):
        return graph
    form = next((form for form in GRAPH_FORMS.values() if form.accepts(graph)), None)
    if form is None:
        raise TypeError(f"expected a graph (a DGLGraph, a PyTorch Geometric Data, an (edge_index, num_nodes) "
                        f"pair or a dgl_iflow.graphs.Graph), got {type(graph).__name__}")
    anchor, signature = form.anchor(graph), form.signature(graph)
    key = id(anchor)
    remembered = _converted.get(key)
    if remembered is not None and remembered[0]() is anchor and same_signature(remembered[1], signature):
        return remembered[2]
    converted = form.to_graph(graph)
    # The entry goes with its anchor, before the anchor's id can be taken by another object.
    _converted[key] = (weakref.ref(anchor, lambda _, key=key: _converted.pop(key, None)), signature, converted)
    return converted


def graph_from_edges(src: Any, dst: Any, num_nodes: int, edge_weight: Tensor | None = None,
                     batch_num_nodes: Any = None) -> GraphLike:
    """The graph ``src[e] -> dst[e]`` on ``num_nodes`` nodes (with its edge weights and batch,
    see :class:`Graph`) in the form users of this installation hold: a ``DGLGraph`` where DGL
    imports, else a :class:`Graph`.

    The data sets and :meth:`~dgl_iflow.models.base.FlowModel.load` build their graphs here.
    """
    graph = Graph(src, dst, num_nodes, edge_weight, batch_num_nodes)
    return to_dgl(graph) if dgl_available() else graph


__all__ = [
    "GRAPH_FORMS", "Graph", "GraphForm", "GraphLike", "as_graph", "batch", "dgl_available", "graph_from_edges",
    "import_dgl", "to_dgl", "to_pyg",
]
