"""Invertible linear map of the graph mean and the deviations from it, with an exact log-det."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import GraphLike, as_graph
from ..layers.basis_conv import node_mean
from .base import GraphTransform, check_node_features


class GraphMeanLinear(GraphTransform):
    r"""Separate linear maps of the graph-wide mean and of every node's deviation from it.

    .. math::
        Y_v = \bar X A + (X_v - \bar X) B, \qquad \bar X = \frac{1}{V} \sum_u X_u,

    with :math:`A, B \in \mathbb{R}^{D \times D}` learned (row vectors, as the features are
    stored). The map is :math:`P \otimes A + (I - P) \otimes B` with :math:`P = \frac{1}{V}
    \mathbf{1}\mathbf{1}^\top` the projection on constant signals, so

    .. math::
        \log|\det J| = \log|\det A| + (V - 1) \log|\det B|,

    and the inverse is exact: :math:`\bar X = \bar Y A^{-1}`,
    :math:`X_v - \bar X = (Y_v - \bar Y) B^{-1}`. When all nodes follow one signal (traffic
    sensors follow the time of day) the mean carries most of the variance; this layer gives it
    its own scale, where residual blocks could only rescale it a factor of at most
    :math:`1 \pm \mathrm{Lip}(g)` per block. It costs :math:`O(V D^2)`, so it scales with the graph.
    On a batch of :math:`G` graphs (``dgl.batch``, a PyG ``Batch``) the mean is each graph's own (as the graph-mean
    operator of the convolutions), and the log-det has :math:`G` and :math:`V - G` in place of
    1 and :math:`V - 1`.

    It starts as the identity; :meth:`initialize_from_data` whitens both parts on training data
    once (as ActNorm initializes its scale), and later calls leave it alone, so a trained or
    loaded layer is never reset.

    Parameters
    ----------
    feats : int
        :math:`D`.

    Examples
    --------
    >>> import torch
    >>> from dgl_iflow.graphs import Graph
    >>> from dgl_iflow.transforms import GraphMeanLinear
    >>> g = Graph([0, 1, 1, 2], [1, 0, 2, 1])  # or a DGLGraph, a PyG Data, (edge_index, V)
    >>> layer = GraphMeanLinear(2)
    >>> layer.initialize_from_data(g, torch.randn(3, 100, 2))
    >>> y, logdet = layer(g, torch.randn(3, 5, 2))
    >>> logdet.shape
    torch.Size([5])
    """

    #: Invertible for every non-singular value of its parameters: no transport cost needed.
    counts_transport = False

    def __init__(self, feats: int) -> None:
        super().__init__()
        if feats < 1:
            raise ValueError(f"feats must be positive, got {feats}")
        self.mean_map = nn.Parameter(torch.empty(feats, feats))
        self.deviation_map = nn.Parameter(torch.empty(feats, feats))
        self.register_buffer("initialized", torch.tensor(False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity map, not yet initialized from data."""
        nn.init.eye_(self.mean_map)
        nn.init.eye_(self.deviation_map)
        self.initialized.fill_(False)

    def _check_input(self, graph: GraphLike, x: Tensor, name: str) -> None:
        check_node_features(graph, x, self.mean_map.shape[0], name, "GraphMeanLinear")

    def _logdet(self, graph: GraphLike, x: Tensor, sign: float, wanted: bool) -> Tensor | None:
        graph = as_graph(graph)
        if not wanted:
            return None
        graphs = graph.batch_size
        total = graphs * torch.linalg.slogdet(self.mean_map).logabsdet
        total = total + (x.shape[0] - graphs) * torch.linalg.slogdet(self.deviation_map).logabsdet
        return sign * total.expand(x.shape[1:-1])

    def forward(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """``y`` of the shape ``(V, *, D)`` of ``x``, and the log-det ``(*,)`` (``None`` unless ``logdet``)."""
        graph = as_graph(graph)
        self._check_input(graph, x, "x")
        mean = node_mean(graph, x)
        y = mean @ self.mean_map + (x - mean) @ self.deviation_map
        return y, self._logdet(graph, x, 1.0, logdet)

    @torch.no_grad()
    def inverse(
        self, graph: GraphLike, y: Tensor, logdet: bool = False, *,
        tol: float = 1e-6, max_iter: int = 200, on_failure: str = "raise",
    ) -> tuple[Tensor, Tensor | None]:
        """Exact inverse (``tol``, ``max_iter``, ``on_failure`` unused) and its log-det."""
        graph = as_graph(graph)
        self._check_input(graph, y, "y")
        mean = node_mean(graph, y)
        x = _solve_right(mean, self.mean_map) + _solve_right(y - mean, self.deviation_map)
        return x, self._logdet(graph, y, -1.0, logdet)

    @torch.no_grad()
    def initialize_from_data(self, graph: GraphLike, x: Tensor) -> None:
        r"""Whiten the mean and the deviations of ``x`` ``(V, N, D)``, once.

        Sets :math:`A = \Sigma_{\bar X}^{-1/2}` and :math:`B = \Sigma_{X - \bar X}^{-1/2}` (the
        means of all graphs and samples pooled, the deviations of all nodes and samples;
        eigenvalues floored at ``1e-6`` of the largest), so both parts of the output have
        identity covariance on ``x``. Graphs of one node have no deviations: :math:`B` stays
        the identity.
        """
        graph = as_graph(graph)
        self._check_input(graph, x, "x")
        if self.initialized:
            return
        data = x.detach().reshape(x.shape[0], -1, x.shape[-1]).double()
        if data.shape[1] < 2:
            raise ValueError(f"initialize_from_data needs at least 2 samples, got {data.shape[1]}")
        mean = node_mean(graph, data)
        graph_means = mean[graph.node_offsets().to(data.device)]  # at each graph's first node
        self.mean_map.copy_(_inverse_sqrt(torch.cov(graph_means.reshape(-1, data.shape[-1]).T)))
        if data.shape[0] > graph.batch_size:
            self.deviation_map.copy_(_inverse_sqrt(torch.cov((data - mean).reshape(-1, data.shape[-1]).T)))
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return f"feats={self.mean_map.shape[0]}"


def _solve_right(y: Tensor, matrix: Tensor) -> Tensor:
    """``y @ matrix^-1`` for ``y`` of shape ``(*, D)``."""
    return torch.linalg.solve(matrix.T, y.reshape(-1, y.shape[-1]).T).T.reshape(y.shape)


def _inverse_sqrt(covariance: Tensor) -> Tensor:
    covariance = torch.atleast_2d(covariance)
    values, vectors = torch.linalg.eigh(covariance)
    values = values.clamp(min=1e-6 * values.max().clamp(min=1e-300))
    return (vectors * values.rsqrt()) @ vectors.T
