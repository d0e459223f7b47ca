"""One continuous-time flow block: an ODE on node features over a time interval, solved by RK4."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from .._backend import dgl
from .base import GraphTransform
from .divergence import autograd_divergence, hutchinson_divergence, make_probes

DIVERGENCES = ("exact", "autograd", "hutchinson")


class JKOBlock(GraphTransform):
    r"""Flow map of :math:`\dot x = f_\theta(x, t)` over :math:`[t_0, t_1]`, with its log-determinant.

    The state and the log-determinant are integrated jointly by classical fourth-order
    Runge-Kutta with ``steps`` equal sub-steps:

    .. math::
        \frac{d}{dt}\begin{pmatrix} x \\ \ell \end{pmatrix} =
        \begin{pmatrix} f_\theta(x, t) \\ \operatorname{div} f_\theta(x, t) \end{pmatrix},
        \qquad \ell(t_1) = \int_{t_0}^{t_1} \operatorname{div} f_\theta(x(t), t)\, dt
        \approx \log\left|\det \frac{\partial x(t_1)}{\partial x(t_0)}\right|,

    the last by Liouville's formula, exact for the ODE and accurate to :math:`O(S^{-4})` for
    the RK4 map. The inverse integrates the same ODE backward in time.

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
    """

    def __init__(
        self,
        field: nn.Module,
        t0: float,
        t1: float,
        steps: int = 3,
        divergence: str = "exact",
        n_probes: int = 1,
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

    def get_extra_state(self) -> dict[str, Any]:
        # Times are kept as Python floats so that .float() / .double() never round them.
        return {"t0": self.t0, "t1": self.t1, "steps": self.steps, "divergence": self.divergence,
                "n_probes": self.n_probes}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.t0, self.t1, self.steps, self.n_probes = state["t0"], state["t1"], state["steps"], state["n_probes"]
        self.set_divergence(state["divergence"])

    def _check_input(self, graph: dgl.DGLGraph, x: Tensor, name: str) -> None:
        if x.dim() < 2 or x.shape[0] != graph.num_nodes():
            raise ValueError(f"{name} must have shape (V, *, D) with V = {graph.num_nodes()}, got {tuple(x.shape)}")

    def _integrate(
        self, graph: dgl.DGLGraph, x: Tensor, t_start: float, t_end: float, with_divergence: bool
    ) -> tuple[Tensor, Tensor | None]:
        """RK4 from ``t_start`` to ``t_end`` (either order) on ``x`` of shape ``(V, B, D)``."""
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

        dt = (t_end - t_start) / self.steps
        logdet = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device) if with_divergence else None
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

    def _run(self, graph: dgl.DGLGraph, x: Tensor, forward: bool, logdet: bool) -> tuple[Tensor, Tensor | None]:
        self._check_input(graph, x, "x" if forward else "z")
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        start, end = (self.t0, self.t1) if forward else (self.t1, self.t0)
        out, ld = self._integrate(graph, flat, start, end, logdet)
        return out.reshape(x.shape), None if ld is None else ld.reshape(x.shape[1:-1])

    def forward(self, graph: dgl.DGLGraph, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """Map ``x(t0)`` of shape ``(V, *, D)`` to ``x(t1)``.

        Returns
        -------
        tuple
            ``x(t1)`` of the shape of ``x`` and :math:`\\int \\operatorname{div} f\\, dt` of shape
            ``(*,)`` (``None`` unless ``logdet``).
        """
        return self._run(graph, x, forward=True, logdet=logdet)

    def inverse(
        self, graph: dgl.DGLGraph, y: Tensor, logdet: bool = False, *,
        tol: float = 1e-6, max_iter: int = 200, on_failure: str = "raise",
    ) -> tuple[Tensor, Tensor | None]:
        """Map ``x(t1)`` back to ``x(t0)`` by integrating from ``t1`` to ``t0``.

        The log-determinant returned with ``logdet`` is that of the inverse map (about minus
        the forward one). The backward integration is not iterative, so ``tol``, ``max_iter``
        and ``on_failure`` are unused: its error against the forward map is what
        :meth:`round_trip_error` measures.
        """
        return self._run(graph, y, forward=False, logdet=logdet)

    @torch.no_grad()
    def round_trip_error(self, graph: dgl.DGLGraph, x: Tensor) -> Tensor:
        """Largest absolute error of ``inverse(forward(x))`` per sample, shape ``(*,)``.

        Forward and backward RK4 maps are not exact inverses: the error is :math:`O(S^{-4})`.
        """
        z, _ = self.forward(graph, x, logdet=False)
        x_back, _ = self.inverse(graph, z)
        return (x_back - x).abs().amax(dim=(0, -1))

    def retime(self, t0: float, t1: float) -> None:
        """Move the block to ``[t0, t1]`` keeping its flow map (see ``GraphVelocityField.retime``)."""
        if not t1 > t0:
            raise ValueError(f"the interval must have t1 > t0, got [{t0}, {t1}]")
        alpha = self.h / (t1 - t0)
        self.field.retime(alpha, self.t0 - alpha * t0, alpha)
        self.t0, self.t1 = float(t0), float(t1)

    def split(self) -> tuple[JKOBlock, JKOBlock]:
        r"""Two copies on :math:`[t_0, m]` and :math:`[m, t_1]`, :math:`m` the midpoint.

        They share the velocity field of this block, so their composition is this block's map
        up to RK4 error (smaller, with twice the sub-steps).
        """
        middle = 0.5 * (self.t0 + self.t1)
        first, second = copy.deepcopy(self), copy.deepcopy(self)
        first.t1 = second.t0 = middle
        return first, second

    def extra_repr(self) -> str:
        return f"t0={self.t0:.4g}, t1={self.t1:.4g}, steps={self.steps}, divergence={self.divergence!r}"
