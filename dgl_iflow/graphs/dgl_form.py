"""DGL graphs (``dgl.graph``, ``dgl.batch``) at the graph door. The one module that imports DGL.

DGL picks its backend from ``$DGLBACKEND``, else ``~/.dgl/config.json``; with neither it prints
a banner, writes that file and assumes PyTorch. This library only works on PyTorch, so importing
it sets ``DGLBACKEND=pytorch`` for this process when the user has not set the variable (DGL is
not imported for that): no banner and no file written into the user's home, whether DGL is
imported by the library or by the user after it. A ``DGLBACKEND`` naming another backend is
refused when DGL is first needed.
"""
from __future__ import annotations

import functools
import os
import sys
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .form import tensor_identity
from .graph import Graph

#: A DGL graph's edge weights, where it has them: ``graph.edata[EDGE_WEIGHT_KEY]``.
EDGE_WEIGHT_KEY = "weight"
#: The DGL stack ``constraints.txt`` pins and CI tests.
TESTED_STACK = "dgl 2.1.0 with torch 2.2.1, torchdata 0.7.1 and numpy 1.26"


os.environ.setdefault("DGLBACKEND", "pytorch")


class DGLBackendError(ImportError):
    """DGL is (to be) imported on a backend other than PyTorch."""


def import_dgl() -> ModuleType:
    """DGL on its PyTorch backend; ``ImportError`` in one line naming the extra to install.

    The import is tried once per process: a failure is remembered and raised again.
    """
    chosen = os.environ.setdefault("DGLBACKEND", "pytorch")  # the user may have unset it since
    if chosen != "pytorch":
        raise DGLBackendError(f"dgl_iflow needs DGL's PyTorch backend, but DGLBACKEND={chosen!r}; "
                              "unset it or set DGLBACKEND=pytorch")
    already = sys.modules.get("dgl.backend")
    if already is not None and already.backend_name != "pytorch":
        raise DGLBackendError(f"dgl was imported with its {already.backend_name!r} backend before "
                              "dgl_iflow; dgl_iflow needs the PyTorch backend (DGLBACKEND=pytorch)")
    module = _import_once()
    if isinstance(module, ImportError):
        raise module
    return module


@functools.lru_cache(maxsize=1)
def _import_once() -> ModuleType | ImportError:
    try:
        import dgl
    except Exception as err:  # graphbolt raises OSError/FileNotFoundError, torchdata ImportError
        failure = ImportError(
            f"this needs DGL, which does not import under torch {torch.__version__} ({err!r}); install "
            f"`pip install 'dgl_iflow[dgl]'` on a torch DGL was built for (tested: {TESTED_STACK}), "
            "or use a PyTorch Geometric graph, an (edge_index, num_nodes) pair or dgl_iflow.graphs.Graph"
        )
        failure.__cause__ = err
        return failure
    return dgl


def dgl_available() -> bool:
    """Whether DGL imports here. A ``DGLBACKEND`` naming another backend still raises."""
    try:
        import_dgl()
    except DGLBackendError:
        raise
    except ImportError:
        return False
    return True


def to_dgl(graph: Graph) -> Any:
    """``graph`` as a ``dgl.DGLGraph`` (a batched one for a batch, edge weights in
    ``edata["weight"]``); needs DGL."""
    dgl = import_dgl()
    src, dst = graph.edges()
    if graph.batch_size > 1:
        component = graph.node_graph_index()[dst.cpu()]
        parts = []
        for index, (count, offset) in enumerate(zip(graph.batch_num_nodes().tolist(), graph.node_offsets().tolist())):
            mask = component == index
            part = dgl.graph((src.cpu()[mask] - offset, dst.cpu()[mask] - offset), num_nodes=count)
            if graph.edge_weight is not None:
                part.edata[EDGE_WEIGHT_KEY] = graph.edge_weight.cpu()[mask]
            parts.append(part)
        return dgl.batch(parts)
    result = dgl.graph((src, dst), num_nodes=graph.num_nodes())
    if graph.edge_weight is not None:
        result.edata[EDGE_WEIGHT_KEY] = graph.edge_weight
    return result


def _edge_weight(graph: Any) -> Tensor | None:
    if EDGE_WEIGHT_KEY not in graph.edata:
        return None
    weight = graph.edata[EDGE_WEIGHT_KEY]
    # DGL's layers take weights as (E,) or (E, 1) alike.
    return weight.squeeze(1) if weight.dim() == 2 and weight.shape[1] == 1 else weight


class DGLForm:
    """A homogeneous ``dgl.DGLGraph``, batched or not; edge weights from ``edata["weight"]``."""

    name = "dgl"

    def accepts(self, obj: Any) -> bool:
        dgl = sys.modules.get("dgl")
        return dgl is not None and isinstance(obj, dgl.DGLGraph)

    def anchor(self, obj: Any) -> Any:
        return obj

    def signature(self, obj: Any) -> tuple:
        return obj.num_nodes(), obj.num_edges(), obj.batch_size, tensor_identity(_edge_weight(obj))

    def to_graph(self, obj: Any) -> Graph:
        if not obj.is_homogeneous:
            raise ValueError(f"dgl_iflow takes homogeneous graphs (one node and one edge type), got node types "
                             f"{obj.ntypes} and edge types {obj.etypes}")
        src, dst = obj.edges()
        return Graph(src, dst, obj.num_nodes(), _edge_weight(obj), obj.batch_num_nodes())
