"""Invertible residual block x + g(x) on node features."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..graphs import GraphLike
from .base import GraphTransform, InversionError, InversionWarning, check_finite, check_node_features, check_on_failure
from .logdet import exact_logdet, power_series_logdet
from .residual import GraphResidual

LOGDET_MODES = ("exact", "estimator")


class InvertibleResBlock(GraphTransform):
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
        (any size), see :func:`power_series_logdet`, its Jacobian-vector products from
        :meth:`GraphResidual.forward_with_jvp`.
    n_exact_terms, stop_probability, n_probes, neumann_gradient
        Options of the estimator.

    Examples
    --------
    >>> import torch
    >>> from dgl_iflow.graphs import Graph
    >>> from dgl_iflow.layers import ChebConv
    >>> from dgl_iflow.transforms import GraphResidual, InvertibleResBlock
    >>> g = Graph([0, 1, 1, 2], [1, 0, 2, 1])  # or a DGLGraph, a PyG Data, (edge_index, V)
    >>> block = InvertibleResBlock(GraphResidual(ChebConv(2, 16, k=2), hidden_feats=(16,)))
    >>> x = torch.randn(3, 5, 2)
    >>> y, logdet = block(g, x)
    >>> logdet.shape
    torch.Size([5])
    >>> x_back, _ = block.inverse(g, y)
    >>> torch.allclose(x_back, x, atol=1e-4)
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
        #: Fixed-point iterations used by the latest :meth:`inverse`.
        self.last_inverse_iterations: int | None = None
        self._estimator_options = dict(
            n_exact_terms=n_exact_terms, stop_probability=stop_probability,
            n_probes=n_probes, neumann_gradient=neumann_gradient,
        )

    def set_logdet_mode(self, mode: str) -> None:
        """``"exact"`` or ``"estimator"``, see the class docstring."""
        if mode not in LOGDET_MODES:
            raise ValueError(f"logdet must be one of {LOGDET_MODES}, got {mode!r}")
        self.logdet_mode = mode

    def _check_input(self, graph: GraphLike, x: Tensor, name: str) -> None:
        check_node_features(graph, x, self.residual.feats, name, type(self).__name__)

    def forward(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """Map ``x`` of shape ``(V, *, D)`` to ``y`` of the same shape.

        Returns
        -------
        tuple
            ``y`` and :math:`\\log|\\det(I + J_g(x))|` of shape ``(*,)`` (``None`` unless
            ``logdet``).
        """
        self._check_input(graph, x, "x")
        if not logdet:
            return x + self.residual(graph, x), None
        if self.logdet_mode == "exact":
            residual, jacobian = self.residual.forward_with_jacobian(graph, x)
            return x + residual, exact_logdet(jacobian)
        residual, jvp = self.residual.forward_with_jvp(graph, x)
        logdet = power_series_logdet(
            jvp, x, sample_dims=tuple(range(1, x.dim() - 1)), create_graph=torch.is_grad_enabled(),
            **self._estimator_options,
        )
        return x + residual, logdet

    @torch.no_grad()
    def shrink(self, factor: float) -> None:
        """Scale the residual function's last layer by ``factor`` < 1, which divides :math:`\\mathrm{Lip}(g)` by at least that."""
        last = self.residual.linears[-1]
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)

    def transport_cost(self, graph: GraphLike, x: Tensor) -> Tensor:
        r"""Squared displacement :math:`\|g(X)\|^2` per sample, shape ``(*,)``."""
        self._check_input(graph, x, "x")
        return self.residual(graph, x).pow(2).sum(dim=(0, -1))

    @torch.no_grad()
    def inverse(
        self, graph: GraphLike, y: Tensor, logdet: bool = False, *,
        tol: float = 1e-6, max_iter: int = 200, on_failure: str = "raise",
    ) -> tuple[Tensor, Tensor | None]:
        r"""Solve :math:`x + g(x) = y` by the fixed-point iteration :math:`x \leftarrow y - g(x)`.

        Stops when every sample's relative residual :math:`\|x + g(x) - y\| / \|y\|` is at
        most ``tol``. Convergence is linear with rate :math:`\mathrm{Lip}(g)`, and the error
        is at most residual :math:`/(1 - \mathrm{Lip}(g))`.

        Parameters
        ----------
        y : Tensor
            Shape ``(V, *, D)``, finite.
        logdet : bool
            Also return :math:`\\log|\\det J_{f^{-1}}(y)| = -\\log|\\det(I + J_g(x))|`, one more
            forward pass.
        tol : float
            Relative residual to reach.
        max_iter : int
            Iteration budget.
        on_failure : str
            ``"raise"`` an :class:`InversionError`, or ``"warn"`` with an
            :class:`InversionWarning` and return the last iterate (an iterate that
            diverged to NaN or infinity raises either way).

        Returns
        -------
        tuple
            ``x`` of the shape of ``y``, and the log-det of shape ``(*,)`` or ``None``.
        """
        check_on_failure(on_failure)
        if max_iter < 1:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        self._check_input(graph, y, "y")
        check_finite(y, "y")
        sample_norm = y.pow(2).sum(dim=(0, -1)).sqrt().clamp_min(torch.finfo(y.dtype).tiny)
        x = y
        relative = float("inf")
        with self.residual.frozen_normalization():
            for iteration in range(1, max_iter + 1):
                update = y - self.residual(graph, x)
                # x - update = x + g(x) - y is the residual of the current iterate.
                relative = float(((x - update).pow(2).sum(dim=(0, -1)).sqrt() / sample_norm).max())
                x = update
                if relative <= tol:
                    self.last_inverse_iterations = iteration
                    return x, self._inverse_logdet(graph, x, logdet)
                if not torch.isfinite(x).all():
                    break
        self.last_inverse_iterations = iteration
        message = (
            f"fixed-point inverse stopped after {iteration} iterations with relative residual "
            f"{relative:.3e} > tol {tol:.1e}: Lip(g) is probably >= 1"
        )
        # A diverged iterate is of no use to anyone, so it raises even with "warn".
        if on_failure == "raise" or not torch.isfinite(x).all():
            raise InversionError(message, relative, iteration)
        warnings.warn(message, InversionWarning, stacklevel=2)
        return x, self._inverse_logdet(graph, x, logdet)

    def _inverse_logdet(self, graph: GraphLike, x: Tensor, wanted: bool) -> Tensor | None:
        return -self.forward(graph, x, logdet=True)[1] if wanted else None

    def extra_repr(self) -> str:
        return f"logdet={self.logdet_mode!r}"
