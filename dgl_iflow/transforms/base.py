"""The one contract of every invertible unit of dgl_iflow, and the inverse's failure policy."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from ..graphs import GraphLike, as_graph

ON_FAILURE = ("raise", "warn")


class InversionError(RuntimeError):
    """An inverse did not reach its tolerance."""

    def __init__(self, message: str, residual: float, iterations: int) -> None:
        super().__init__(message)
        self.residual = residual
        self.iterations = iterations


class InversionWarning(RuntimeWarning):
    """An inverse did not reach its tolerance and ``on_failure="warn"`` was set."""


def check_finite(tensor: Tensor, name: str) -> None:
    """Raise ``ValueError`` when ``tensor`` holds NaN or infinite values."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} of shape {tuple(tensor.shape)} holds {bad} NaN or infinite values")


def check_on_failure(on_failure: str) -> None:
    """Raise ``ValueError`` unless ``on_failure`` is ``"raise"`` or ``"warn"``."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")


class GraphTransform(nn.Module, ABC):
    r"""An invertible map :math:`T` of node features on a graph.

    Every invertible unit (residual block, per-node affine layer, ODE block) and their
    composition :class:`~dgl_iflow.transforms.GraphFlow` follow this contract, graph first as in
    DGL, on node features of shape ``(V, *, D)``:

    - ``forward(graph, x, logdet=True)`` returns ``(y, ld)`` with :math:`y = T(x)` and
      :math:`\mathrm{ld} = \log|\det \partial y / \partial x|`, one value per sample, shape ``(*,)``;
    - ``inverse(graph, y, logdet=False, tol=..., max_iter=..., on_failure=...)`` returns
      ``(x, ld)`` with :math:`x = T^{-1}(y)` and :math:`\mathrm{ld} = \log|\det \partial x / \partial y|`,
      minus the forward log-det at :math:`x`.

    So the log-det always belongs to the map just applied, and densities follow one rule:
    :math:`\log p_X(x) = \log p_Y(T(x)) + \mathrm{ld}`. ``ld`` is ``None`` when not asked for.

    An iterative inverse stops when the relative residual reaches ``tol`` within ``max_iter``
    iterations; otherwise it raises :class:`InversionError` (``on_failure="raise"``) or warns
    with :class:`InversionWarning` and returns its last iterate (``"warn"``). An iterate that is
    no longer finite raises either way. Exact inverses ignore the three options.
    """

    #: Whether the flow's transport cost :math:`\|T(x) - x\|^2` includes this unit's move.
    counts_transport: bool = True

    @abstractmethod
    def forward(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """``T(x)`` and :math:`\\log|\\det J_T(x)|`; see the class docstring."""

    @abstractmethod
    def inverse(
        self, graph: GraphLike, y: Tensor, logdet: bool = False, *,
        tol: float = 1e-6, max_iter: int = 200, on_failure: str = "raise",
    ) -> tuple[Tensor, Tensor | None]:
        """``T^{-1}(y)`` and :math:`\\log|\\det J_{T^{-1}}(y)|`; see the class docstring."""

    def set_logdet_mode(self, mode: str) -> None:
        """``"exact"`` or ``"estimator"``, for units that offer both; others compute it exactly."""

    def initialize_from_data(self, graph: GraphLike, x: Tensor) -> None:
        """Data-dependent initialization on the unit's input ``x`` ``(V, N, D)``; most units have none."""


def check_node_features(graph: GraphLike, x: Tensor, feats: int, name: str, owner: str) -> None:
    """Raise ``ValueError`` unless ``x`` has shape ``(V, *, feats)`` for the ``V`` nodes of ``graph``."""
    graph = as_graph(graph)
    if x.dim() < 2 or x.shape[0] != graph.num_nodes() or x.shape[-1] != feats:
        raise ValueError(
            f"{owner}: {name} must have shape (V, *, {feats}) with V = {graph.num_nodes()} nodes, got {tuple(x.shape)}"
        )
