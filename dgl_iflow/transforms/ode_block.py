"""One continuous-time flow block: an ODE on node features over a time interval."""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torchdiffeq
from torch import Tensor, nn

from ..graphs import GraphLike, as_graph
from .base import GraphTransform, InversionError, InversionWarning, check_finite, check_on_failure
from .divergence import autograd_divergence, hutchinson_divergence, make_probes

DIVERGENCES = ("exact", "autograd", "hutchinson")
#: ``"rk4"``: classical Runge-Kutta with a fixed number of steps (cheap, for training);
#: ``"dopri5"``: adaptive Dormand-Prince to ``rtol``/``atol`` (torchdiffeq; for evaluation).
SOLVERS = ("rk4", "dopri5")


class JKOBlock(GraphTransform):
    r"""Flow map of :math:`\dot x = f_\theta(x, t)` over :math:`[t_0, t_1]`, with its log-determinant.

    The state and the log-determinant are integrated jointly, by classical fourth-order
    Runge-Kutta with ``steps`` equal sub-steps or by adaptive Dormand-Prince (``solver``):

    .. math::
        \frac{d}{dt}\begin{pmatrix} x \\ \ell \end{pmatrix} =
        \begin{pmatrix} f_\theta(x, t) \\ \operatorname{div} f_\theta(x, t) \end{pmatrix},
        \qquad \ell(t_1) = \int_{t_0}^{t_1} \operatorname{div} f_\theta(x(t), t)\, dt
        \approx \log\left|\det \frac{\partial x(t_1)}{\partial x(t_0)}\right|,

    the last by Liouville's formula, exact for the ODE and accurate to :math:`O(S^{-4})` for
    the RK4 map. The inverse integrates the same ODE backward in time and checks itself: it
    integrates its result forward again, and a relative residual
    :math:`\|T(x) - y\| / \|y\|` above ``tol`` is an inversion failure
    (:class:`~dgl_iflow.transforms.GraphTransform`'s policy), since forward and backward
    numerical maps are inverses only up to the solver's error.

    Parameters
    ----------
    field : nn.Module
        Velocity ``field(graph, x, t)`` on ``x`` of shape ``(V, B, D)``. For
        ``divergence="exact"`` it also needs ``divergence_context(graph)`` and
        ``forward_with_divergence(graph, x, t, context)`` (see
        :class:`~dgl_iflow.transforms.GraphVelocityField`); :meth:`retime` needs ``retime``.
    t0, t1 : float
        Integration interval, :math:`t_0 < t_1`.
    steps : int
        RK4 sub-steps :math:`S`.
    divergence : str
        ``"exact"`` (closed form from the layer structure), ``"autograd"`` (exact, :math:`V D`
        backward passes: small :math:`V D` only) or ``"hutchinson"`` (unbiased estimate with
        ``n_probes`` Rademacher probes, fixed along one integration: any size).
    n_probes : int
        Probes of the Hutchinson estimate.
    solver : str
        ``"rk4"`` (``steps`` fixed steps) or ``"dopri5"`` (adaptive, to ``rtol`` and ``atol``).
    rtol, atol : float
        Tolerances of ``"dopri5"``.
    """

    def __init__(
        self,
        field: nn.Module,
        t0: float,
        t1: float,
        steps: int = 3,
        divergence: str = "exact",
        n_probes: int = 1,
        solver: str = "rk4",
        rtol: float = 1e-8,
        atol: float = 1e-10,
    ) -> None:
        super().__init__()
        if not t1 > t0:
            raise ValueError(f"the interval must have t1 > t0, got [{t0}, {t1}]")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if n_probes < 1:
            raise ValueError(f"n_probes must be >= 1, got {n_probes}")
        self.field = field
        self.t0, self.t1 = float(t0), float(t1)
        self.steps = int(steps)
        self.n_probes = int(n_probes)
        self.set_divergence(divergence)
        self.set_solver(solver, rtol, atol)
        #: Largest relative residual of the latest :meth:`inverse`'s check.
        self.last_inverse_error: float | None = None

    @property
    def h(self) -> float:
        """Interval length :math:`h = t_1 - t_0`."""
        return self.t1 - self.t0

    def set_divergence(self, mode: str) -> None:
        """``"exact"``, ``"autograd"`` or ``"hutchinson"``; see the class docstring."""
        if mode not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {mode!r}")
        if mode == "exact" and not hasattr(self.field, "forward_with_divergence"):
            raise ValueError(f"{type(self.field).__name__} has no exact divergence; use 'autograd' or 'hutchinson'")
        self.divergence = mode

    def set_solver(self, solver: str, rtol: float | None = None, atol: float | None = None) -> None:
        """``"rk4"`` or ``"dopri5"`` (with new tolerances where given); see the class docstring."""
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        rtol = self.rtol if rtol is None else float(rtol)
        atol = self.atol if atol is None else float(atol)
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got {rtol} and {atol}")
        self.solver, self.rtol, self.atol = solver, rtol, atol

    def get_extra_state(self) -> dict[str, Any]:
        # Times are kept as Python floats so that .float() / .double() never round them.
        return {"t0": self.t0, "t1": self.t1, "steps": self.steps, "divergence": self.divergence,
                "n_probes": self.n_probes, "solver": self.solver, "rtol": self.rtol, "atol": self.atol}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.t0, self.t1, self.steps, self.n_probes = state["t0"], state["t1"], state["steps"], state["n_probes"]
        self.set_divergence(state["divergence"])
        self.set_solver(state["solver"], state["rtol"], state["atol"])

    def _check_input(self, graph: GraphLike, x: Tensor, name: str) -> None:
        graph = as_graph(graph)
        if x.dim() < 2 or x.shape[0] != graph.num_nodes():
            raise ValueError(f"{name} must have shape (V, *, D) with V = {graph.num_nodes()}, got {tuple(x.shape)}")

    def _integrate(
        self, graph: GraphLike, x: Tensor, t_start: float, t_end: float, with_divergence: bool
    ) -> tuple[Tensor, Tensor | None]:
        """From ``t_start`` to ``t_end`` (either order) on ``x`` of shape ``(V, B, D)``."""
        create_graph = torch.is_grad_enabled()
        if with_divergence and self.divergence == "exact":
            context = self.field.divergence_context(graph)
        if with_divergence and self.divergence == "hutchinson":
            probes = make_probes(x, self.n_probes)

        def velocity(state: Tensor, t: float) -> tuple[Tensor, Tensor | None]:
            if not with_divergence:
                return self.field(graph, state, t), None
            if self.divergence == "exact":
                return self.field.forward_with_divergence(graph, state, t, context)
            closure = lambda z: self.field(graph, z, t)  # noqa: E731
            if self.divergence == "autograd":
                return autograd_divergence(closure, state, create_graph)
            return hutchinson_divergence(closure, state, probes, create_graph)

        logdet = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device) if with_divergence else None
        if self.solver == "dopri5":
            return self._dopri5(velocity, x, logdet, t_start, t_end)
        dt = (t_end - t_start) / self.steps
        for step in range(self.steps):
            t = t_start + step * dt
            k1, l1 = velocity(x, t)
            k2, l2 = velocity(x + 0.5 * dt * k1, t + 0.5 * dt)
            k3, l3 = velocity(x + 0.5 * dt * k2, t + 0.5 * dt)
            k4, l4 = velocity(x + dt * k3, t + dt)
            x = x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            if with_divergence:
                logdet = logdet + dt / 6.0 * (l1 + 2.0 * l2 + 2.0 * l3 + l4)
        return x, logdet

    def _dopri5(self, velocity, x: Tensor, logdet: Tensor | None, t_start: float, t_end: float):
        times = torch.tensor([t_start, t_end], dtype=x.dtype, device=x.device)
        options = dict(rtol=self.rtol, atol=self.atol, method="dopri5")
        if logdet is None:
            return torchdiffeq.odeint(lambda t, state: velocity(state, t)[0], x, times, **options)[-1], None
        end_x, end_logdet = torchdiffeq.odeint(lambda t, state: velocity(state[0], t), (x, logdet), times, **options)
        return end_x[-1], end_logdet[-1]

    def _run(self, graph: GraphLike, x: Tensor, forward: bool, logdet: bool) -> tuple[Tensor, Tensor | None]:
        self._check_input(graph, x, "x" if forward else "z")
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        start, end = (self.t0, self.t1) if forward else (self.t1, self.t0)
        out, ld = self._integrate(graph, flat, start, end, logdet)
        return out.reshape(x.shape), None if ld is None else ld.reshape(x.shape[1:-1])

    def forward(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """Map ``x(t0)`` of shape ``(V, *, D)`` to ``x(t1)``.

        Returns
        -------
        tuple
            ``x(t1)`` of the shape of ``x`` and :math:`\\int \\operatorname{div} f\\, dt` of shape
            ``(*,)`` (``None`` unless ``logdet``).
        """
        return self._run(graph, x, forward=True, logdet=logdet)

    def inverse(
        self, graph: GraphLike, y: Tensor, logdet: bool = False, *,
        tol: float = 1e-6, max_iter: int = 200, on_failure: str = "raise",
    ) -> tuple[Tensor, Tensor | None]:
        r"""Map ``x(t1)`` back to ``x(t0)`` by integrating from ``t1`` to ``t0``, checked.

        The log-determinant returned with ``logdet`` is that of the inverse map (about minus
        the forward one). The result is integrated forward again: if the relative residual
        :math:`\max \|T(x) - y\| / \|y\|` over samples (kept in :attr:`last_inverse_error`)
        exceeds ``tol``, this raises :class:`~dgl_iflow.transforms.InversionError`, or warns
        with ``on_failure="warn"``. ``max_iter`` is unused: the integration is not iterative.
        """
        check_on_failure(on_failure)
        check_finite(y, "y")
        x, inverse_logdet = self._run(graph, y, forward=False, logdet=logdet)
        with torch.no_grad():
            again, _ = self._run(graph, x, forward=True, logdet=False)
            sample_norm = y.pow(2).sum(dim=(0, -1)).sqrt().clamp_min(torch.finfo(y.dtype).tiny)
            relative = float(((again - y).pow(2).sum(dim=(0, -1)).sqrt() / sample_norm).max())
        self.last_inverse_error = relative
        if relative <= tol:
            return x, inverse_logdet
        remedy = "use solver='dopri5' or more steps" if self.solver == "rk4" else "lower rtol and atol"
        message = (
            f"ODE block on [{self.t0:.4g}, {self.t1:.4g}]: the backward integration ({self.solver}) misses the "
            f"forward map by a relative {relative:.3e} > tol {tol:.1e}; {remedy}"
        )
        if on_failure == "raise" or not torch.isfinite(x).all():
            raise InversionError(message, relative, 1)
        warnings.warn(message, InversionWarning, stacklevel=2)
        return x, inverse_logdet

    @torch.no_grad()
    def round_trip_error(self, graph: GraphLike, x: Tensor, relative: bool = False) -> Tensor:
        """Largest absolute error of ``inverse(forward(x))`` per sample, shape ``(*,)``; with
        ``relative``, :math:`\\|x - T^{-1}(T(x))\\| / \\|x\\|` per sample instead.

        Forward and backward numerical maps are not exact inverses: for RK4 the error is
        :math:`O(S^{-4})`, for ``"dopri5"`` about its tolerances.
        """
        z, _ = self.forward(graph, x, logdet=False)
        x_back, _ = self._run(graph, z, forward=False, logdet=False)
        if not relative:
            return (x_back - x).abs().amax(dim=(0, -1))
        scale = x.pow(2).sum(dim=(0, -1)).sqrt().clamp_min(torch.finfo(x.dtype).tiny)
        return (x_back - x).pow(2).sum(dim=(0, -1)).sqrt() / scale

    def retime(self, t0: float, t1: float) -> None:
        """Move the block to ``[t0, t1]`` keeping its flow map (see ``GraphVelocityField.retime``)."""
        if not t1 > t0:
            raise ValueError(f"the interval must have t1 > t0, got [{t0}, {t1}]")
        alpha = self.h / (t1 - t0)
        self.field.retime(alpha, self.t0 - alpha * t0, alpha)
        self.t0, self.t1 = float(t0), float(t1)

    def split(self) -> tuple[JKOBlock, JKOBlock]:
        r"""Two copies on :math:`[t_0, m]` and :math:`[m, t_1]`, :math:`m` the midpoint.

        Each holds a copy of this block's velocity field, so their composition is this block's
        map up to the solver's error (for RK4 smaller: twice the sub-steps over the interval).
        """
        middle = 0.5 * (self.t0 + self.t1)
        first, second = copy.deepcopy(self), copy.deepcopy(self)
        first.t1 = second.t0 = middle
        return first, second

    def extra_repr(self) -> str:
        solver = f"steps={self.steps}" if self.solver == "rk4" else f"solver='dopri5', rtol={self.rtol:g}, atol={self.atol:g}"
        return f"t0={self.t0:.4g}, t1={self.t1:.4g}, {solver}, divergence={self.divergence!r}"
