"""What a graph form tells the door: whether an object is one of its graphs, and that graph as a
:class:`~dgl_iflow.graphs.graph.Graph`."""
from __future__ import annotations

import weakref
from typing import Any, Protocol

from torch import Tensor

from .graph import Graph


class GraphForm(Protocol):
    """One way users hold graphs (a DGL graph, a PyTorch Geometric ``Data``, an ``edge_index``).

    :func:`~dgl_iflow.graphs.as_graph` remembers the conversion of a graph while its
    :meth:`anchor` lives and its :meth:`signature` stays the same, so that a layer called on
    the same graph again finds its operators already built.
    """

    #: Shown in errors and in the contract test's names.
    name: str

    def accepts(self, obj: Any) -> bool:
        """Whether ``obj`` is a graph of this form (without importing its package)."""

    def anchor(self, obj: Any) -> Any:
        """The object, held weakly, that the conversion is remembered on."""

    def signature(self, obj: Any) -> tuple:
        """What changes when the graph is edited in place; tensors as :func:`tensor_identity`."""

    def to_graph(self, obj: Any) -> Graph:
        """The graph as the library's own :class:`Graph`."""


def tensor_identity(tensor: Tensor | None) -> tuple:
    """A signature item for a tensor that may be replaced or edited in place: the tensor held
    weakly and its version counter."""
    if tensor is None:
        return (None,)
    return (weakref.ref(tensor), tensor._version)


def same_signature(first: tuple, second: tuple) -> bool:
    """Item by item, weak references by the identity of what they refer to."""
    if len(first) != len(second):
        return False
    for a, b in zip(first, second):
        if isinstance(a, tuple) and isinstance(b, tuple):
            if not same_signature(a, b):
                return False
        elif isinstance(a, weakref.ref) or isinstance(b, weakref.ref):
            if not (isinstance(a, weakref.ref) and isinstance(b, weakref.ref)) or a() is None or a() is not b():
                return False
        elif a != b:
            return False
    return True
