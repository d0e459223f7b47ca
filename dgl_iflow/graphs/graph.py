"""The library's own light graph: what every layer needs to know about a graph, and nothing more."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Graph:
    r"""A directed graph as an edge list: node count, edges ``src[e] -> dst[e]``, optional edge
    weights, and the node counts of the graphs it batches.

    It is what every DGL, PyTorch Geometric or ``edge_index`` graph is turned into at the
    library's door (:func:`~dgl_iflow.graphs.as_graph`), and a graph type in its own right for
    users with neither package. Its methods read like DGL's (``num_nodes()``, ``edges()``,
    ``batch_num_nodes()``), so code written for a ``DGLGraph`` reads it too. It is not
    changed after it is built.

    Parameters
    ----------
    src, dst : Tensor or sequence of int
        Source and destination node of every edge, shape ``(E,)``; an edge ``u -> v`` lets
        node ``v`` read node ``u``.
    num_nodes : int, optional
        :math:`V`. Default: one more than the largest node index in the edges.
    edge_weight : Tensor, optional
        One weight per edge, shape ``(E,)``.
    batch_num_nodes : Tensor or sequence of int, optional
        Node counts of the graphs this one is a batch of (their nodes numbered one graph after
        the other, no edge between two of them), shape ``(G,)``. Default: one graph.

    Examples
    --------
    >>> from dgl_iflow.graphs import Graph
    >>> g = Graph([0, 1, 1, 2], [1, 0, 2, 1])
    >>> g.num_nodes(), g.num_edges(), g.edge_index.tolist()
    (3, 4, [[0, 1, 1, 2], [1, 0, 2, 1]])
    """

    def __init__(self, src: Tensor | Sequence[int], dst: Tensor | Sequence[int], num_nodes: int | None = None,
                 edge_weight: Tensor | None = None,
                 batch_num_nodes: Tensor | Sequence[int] | None = None) -> None:
        src, dst = _node_index(src, "src"), _node_index(dst, "dst")
        if src.shape != dst.shape:
            raise ValueError(f"src and dst must have the same length, got {len(src)} and {len(dst)}")
        largest = int(torch.maximum(src.max(), dst.max())) if len(src) else -1
        num_nodes = largest + 1 if num_nodes is None else int(num_nodes)
        if num_nodes < 0 or largest >= num_nodes or (len(src) and min(int(src.min()), int(dst.min())) < 0):
            raise ValueError(f"edges must join nodes 0 .. {num_nodes - 1} of a graph of {num_nodes} nodes; "
                             f"they name node {largest if largest >= num_nodes else min(int(src.min()), int(dst.min()))}")
        if edge_weight is not None:
            edge_weight = torch.as_tensor(edge_weight)
            if edge_weight.shape != src.shape or not edge_weight.is_floating_point():
                raise ValueError(f"edge_weight must be a float tensor of shape ({len(src)},), one weight per "
                                 f"edge, got {edge_weight.dtype} of shape {tuple(edge_weight.shape)}")
        counts = torch.tensor([num_nodes]) if batch_num_nodes is None \
            else _node_index(batch_num_nodes, "batch_num_nodes").cpu()
        if counts.dim() != 1 or len(counts) == 0 or int(counts.sum()) != num_nodes or bool((counts < 0).any()):
            raise ValueError(f"batch_num_nodes must be non-negative node counts summing to {num_nodes}, "
                             f"got {counts.tolist()}")
        self._num_nodes = num_nodes
        self._batch_num_nodes = counts
        # A copy, not a view of the user's tensors: the graph stays as built, and holds nothing
        # that keeps the user's graph object (the conversion's anchor) alive.
        self._edge_index = torch.stack([src, dst])
        self.edge_weight = edge_weight
        if len(counts) > 1 and len(src):
            component = self.node_graph_index().to(src.device)
            if not torch.equal(component[src], component[dst]):
                raise ValueError("an edge joins two graphs of the batch; each edge must stay within its own graph")

    def num_nodes(self) -> int:
        return self._num_nodes

    def num_edges(self) -> int:
        return self._edge_index.shape[1]

    def edges(self) -> tuple[Tensor, Tensor]:
        """``(src, dst)``, each of shape ``(E,)``."""
        return self._edge_index[0], self._edge_index[1]

    @property
    def edge_index(self) -> Tensor:
        """``(2, E)``: sources in the first row, destinations in the second, as PyTorch Geometric has them."""
        return self._edge_index

    @property
    def batch_size(self) -> int:
        """Number of graphs batched in this one."""
        return len(self._batch_num_nodes)

    def batch_num_nodes(self) -> Tensor:
        """Node count of every graph of the batch, ``(G,)``, on the CPU."""
        return self._batch_num_nodes

    def node_graph_index(self) -> Tensor:
        """The graph of the batch every node belongs to, ``(V,)``, on the CPU."""
        return torch.repeat_interleave(torch.arange(len(self._batch_num_nodes)), self._batch_num_nodes)

    def node_offsets(self) -> Tensor:
        """The index of every graph's first node, ``(G,)``, on the CPU."""
        return torch.cumsum(self._batch_num_nodes, 0) - self._batch_num_nodes

    @property
    def device(self) -> torch.device:
        return self._edge_index.device

    def to(self, device: torch.device | str) -> Graph:
        """The same graph with its tensors on ``device``."""
        weight = None if self.edge_weight is None else self.edge_weight.to(device)
        return Graph(*self._edge_index.to(device), self._num_nodes, weight, self._batch_num_nodes)

    def __repr__(self) -> str:
        batch = f", batch_size={self.batch_size}" if self.batch_size > 1 else ""
        weight = ", weighted" if self.edge_weight is not None else ""
        return f"Graph(num_nodes={self._num_nodes}, num_edges={self.num_edges()}{batch}{weight})"


def batch(graphs: Sequence[Graph]) -> Graph:
    """One graph holding ``graphs`` side by side, nodes numbered one graph after the other, like
    ``dgl.batch``. Edge weights are kept when every graph has them."""
    if not graphs:
        raise ValueError("batch needs at least one graph")
    offsets = torch.cumsum(torch.tensor([0] + [g.num_nodes() for g in graphs[:-1]]), 0).tolist()
    src = torch.cat([g.edges()[0].cpu() + offset for g, offset in zip(graphs, offsets)])
    dst = torch.cat([g.edges()[1].cpu() + offset for g, offset in zip(graphs, offsets)])
    weights = [g.edge_weight for g in graphs]
    weight = torch.cat([w.cpu() for w in weights]) if all(w is not None for w in weights) else None
    counts = torch.cat([g.batch_num_nodes() for g in graphs])
    return Graph(src, dst, int(counts.sum()), weight, counts)


def _node_index(values: Tensor | Sequence[int], name: str) -> Tensor:
    index = torch.as_tensor(values)
    if index.dim() != 1 or (index.numel() and index.is_floating_point()) or index.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D sequence of integer node indices, got {index.dtype} of "
                         f"shape {tuple(index.shape)}")
    return index.long()
