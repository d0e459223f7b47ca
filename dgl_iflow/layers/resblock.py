"""Invertible residual block x + g(x) on node features."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .._backend import dgl
from .logdet import exact_logdet, power_series_logdet
from .residual import GraphResidual

LOGDET_MODES = ("exact", "estimator")


class InversionError(RuntimeError):
    """The fixed-point inverse did not reach its tolerance."""

    def __init__(self, message: str, residual: float, iterations: int) -> None:
        super().__init__(message)
        self.residual = residual
        self.iterations = iterations


class InversionWarning(RuntimeWarning):
    """The fixed-point inverse did not reach its tolerance and ``on_failure="warn"`` was set."""


def check_finite(tensor: Tensor, name: str) -> None:
    """Raise ``ValueError`` when ``tensor`` holds NaN or infinite values."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} of shape {tuple(tensor.shape)} holds {bad} NaN or infinite values")


class InvertibleResBlock(nn.Module):
    r"""Invertible residual block (Behrmann et al., 2019) on graph node features.

    .. math::
        Y = X + g(X), \qquad \log p_X(X) = \log p_Y(Y) + \log|\det(I + J_g(X))|,

    invertible when :math:`\mathrm{Lip}(g) < 1`, which training keeps through the transport
    cost :math:`\|g(X)\|^2` and which :meth:`inverse` verifies.

    Parameters
    ----------
    residual : GraphResidual
        The residual function :math:`g`.
    logdet : str
        ``"exact"``: :math:`\log|\det(I + J_g)|` from the Jacobian assembled by
        :meth:`GraphResidual.forward_with_jacobian` (``V D`` up to a few hundred).
        ``"estimator"``: the unbiased Russian-roulette power series with Hutchinson probes
        (any size), see :func:`power_series_logdet`.
    n_exact_terms, stop_probability, n_probes, neumann_gradient
        Options of the estimator.

    Examples
    --------
    >>> import dgl, torch
    >>> from dgl_iflow.layers import ChebConv, GraphResidual, InvertibleResBlock
    >>> g = dgl.graph(([0, 1, 1, 2], [1, 0, 2, 1]))
    >>> block = InvertibleResBlock(GraphResidual(ChebConv(2, 16, k=2), hidden_feats=(16,)))
    >>> x = torch.randn(3, 5, 2)
    >>> y, logdet = block(g, x)
    >>> logdet.shape
    torch.Size([5])
    >>> torch.allclose(block.inverse(g, y), x, atol=1e-4)
    True
    """

    def __init__(
        self,
        residual: GraphResidual,
        logdet: str = "exact",
        n_exact_terms: int = 2,
        stop_probability: float = 0.5,
        n_probes: int = 1,
        neumann_gradient: bool = True,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.set_logdet_mode(logdet)
        self._estimator_options = dict(
            n_exact_terms=n_exact_terms, stop_probability=stop_probability,
            n_probes=n_probes, neumann_gradient=neumann_gradient,
        )

    def set_logdet_mode(self, mode: str) -> None:
        """``"exact"`` or ``"estimator"``, see the class docstring."""
        if mode not in LOGDET_MODES:
            raise ValueError(f"logdet must be one of {LOGDET_MODES}, got {mode!r}")
        self.logdet_mode = mode

    def _check_input(self, graph: dgl.DGLGraph, x: Tensor, name: str) -> None:
        feats = self.residual.feats
        if x.dim() < 2 or x.shape[0] != graph.num_nodes() or x.shape[-1] != feats:
            raise ValueError(
                f"{name} must have shape (V, *, {feats}) with V = {graph.num_nodes()} nodes, "
                f"got {tuple(x.shape)}"
            )

    def forward(self, graph: dgl.DGLGraph, x: Tensor, jac: bool = True) -> tuple[Tensor, Tensor | None]:
        """Map ``x`` of shape ``(V, *, D)`` to ``y`` of the same shape.

        Returns
        -------
        tuple
            ``y`` and :math:`\\log|\\det(I + J_g(x))|` of shape ``(*,)`` (``None`` when
            ``jac`` is false).
        """
        self._check_input(graph, x, "x")
        if not jac:
            return x + self.residual(graph, x), None
        if self.logdet_mode == "exact":
            residual, jacobian = self.residual.forward_with_jacobian(graph, x)
            return x + residual, exact_logdet(jacobian)
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            residual = self.residual(graph, x_in)
            logdet = power_series_logdet(
                residual, x_in, sample_dims=tuple(range(1, x.dim() - 1)),
                create_graph=differentiable, **self._estimator_options,
            )
        y = x_in + residual
        return (y, logdet) if differentiable else (y.detach(), logdet)

    def transport_cost(self, graph: dgl.DGLGraph, x: Tensor) -> Tensor:
        r"""Squared displacement :math:`\|g(X)\|^2` per sample, shape ``(*,)``."""
        self._check_input(graph, x, "x")
        return self.residual(graph, x).pow(2).sum(dim=(0, -1))

    @torch.no_grad()
    def inverse(
        self,
        graph: dgl.DGLGraph,
        y: Tensor,
        tol: float = 1e-6,
        max_iter: int = 200,
        on_failure: str = "raise",
    ) -> Tensor:
        r"""Solve :math:`x + g(x) = y` by the fixed-point iteration :math:`x \leftarrow y - g(x)`.

        Stops when every sample's relative residual :math:`\|x + g(x) - y\| / \|y\|` is at
        most ``tol``. Convergence is linear with rate :math:`\mathrm{Lip}(g)`, and the error
        is at most residual :math:`/(1 - \mathrm{Lip}(g))`.

        Parameters
        ----------
        y : Tensor
            Shape ``(V, *, D)``, finite.
        tol : float
            Relative residual to reach.
        max_iter : int
            Iteration budget.
        on_failure : str
            ``"raise"`` an :class:`InversionError`, or ``"warn"`` with an
            :class:`InversionWarning` and return the last iterate.

        Returns
        -------
        Tensor
            ``x`` of the shape of ``y``.
        """
        if on_failure not in ("raise", "warn"):
            raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}")
        self._check_input(graph, y, "y")
        check_finite(y, "y")
        sample_norm = y.pow(2).sum(dim=(0, -1)).sqrt().clamp_min(torch.finfo(y.dtype).tiny)
        x = y
        relative = float("inf")
        for iteration in range(1, max_iter + 1):
            update = y - self.residual(graph, x)
            # x - update = x + g(x) - y is the residual of the current iterate.
            relative = float(((x - update).pow(2).sum(dim=(0, -1)).sqrt() / sample_norm).max())
            x = update
            if relative <= tol:
                return x
            if not torch.isfinite(x).all():
                break
        message = (
            f"fixed-point inverse stopped after {iteration} iterations with relative residual "
            f"{relative:.3e} > tol {tol:.1e}: Lip(g) is probably >= 1"
        )
        if on_failure == "raise":
            raise InversionError(message, relative, iteration)
        warnings.warn(message, InversionWarning, stacklevel=2)
        return x

    def extra_repr(self) -> str:
        return f"logdet={self.logdet_mode!r}"
