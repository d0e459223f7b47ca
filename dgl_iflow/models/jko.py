"""JKO-iFlow on graphs: a chain of continuous-time blocks, trained one JKO step at a time."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..graphs import GraphLike
from ..transforms.ode_block import JKOBlock
from ..transforms.velocity import FieldSpec
from ..layers import CONVS
from .base import FlowModel

#: Largest flow feature size (``d``, or ``V d`` for ``conv="mlp"``) for which
#: ``divergence="auto"`` picks the exact divergence, whose cost is that many forward passes.
EXACT_DIVERGENCE_MAX_FEATS = 64

CHECKPOINT_FORMAT = "dgl_iflow.JKOFlow/2"


class JKOFlow(FlowModel):
    r"""Normalizing flow of node features built from JKO steps (Xu, Cheng, Xie 2023).

    Block :math:`k` is the flow map of an ODE :math:`\dot x = f_k(x, t)` over
    :math:`[t_k, t_{k+1}]` (:class:`JKOBlock`); the chain :math:`F` maps features to a latent
    :math:`H = F(X)` and, with :math:`\ell_k` the integrated divergences,

    .. math::
        \log p(X \mid Y) = \log q(F(X) \mid Y) + \sum_k \ell_k(X),

    where :math:`q` is the class-conditional :class:`~dgl_iflow.latents.NodeGaussianLatent` (with ``num_classes``),
    the law of real-valued targets :class:`~dgl_iflow.latents.LinearGaussianLatent`
    (``latent="linear_gaussian"``: :meth:`predict`, :meth:`predict_interval`) or :math:`N(0, I)`
    (unconditional, ``num_classes=None``). Blocks are added and trained one
    at a time by :func:`~dgl_iflow.fit_jko`; a new model has none and is the identity. The
    interface (densities, prediction, generation, checkpoints) is
    :class:`~dgl_iflow.models.base.FlowModel`'s, on sample-first ``(N, V, d)`` features.

    Parameters
    ----------
    graph : GraphLike
        The shared graph of :math:`V` nodes.
    feats : int
        Node feature size :math:`d`.
    num_classes : int, optional
        Number of node classes :math:`K`; ``None`` with a law of real-valued targets
        (``latent="linear_gaussian"``), or for an unconditional flow.
    conv : str
        First layer of every velocity field: ``"l3"`` (:class:`~dgl_iflow.layers.L3Conv`),
        ``"cheb"`` (:class:`~dgl_iflow.layers.ChebConv`), ``"node"`` (the same MLP on every
        node, no message passing) or ``"mlp"`` (graph-free: the :math:`V d` features of a
        sample form one vector), as in :class:`~dgl_iflow.IGNN`.
    hidden_feats : sequence of int
        Width of the convolution output, then the node-wise hidden widths.
    orders, cheb_k, node_bias : sequence of int, int, bool
        Options of the layers, as in :class:`~dgl_iflow.IGNN` (``node_bias``: one bias
        per node in ``"l3"``).
    activation : str
        ``"tanh"`` (cheapest exact divergence), ``"softplus"``, ``"lipswish"`` or ``"elu"``.
    steps : int
        RK4 sub-steps :math:`S` of every block: the solver of training.
    solver : str
        The solver of everything else (densities, prediction, generation): ``"dopri5"``
        (adaptive, to ``rtol`` and ``atol``, as the paper evaluated) or ``"rk4"``. Generation
        checks every block's backward integration against its forward map to a relative
        :attr:`inverse_tol` by default (see :class:`JKOBlock`).
    rtol, atol : float
        Tolerances of ``"dopri5"``.
    divergence : str
        ``"exact"``, ``"autograd"``, ``"hutchinson"`` or ``"auto"`` (exact when the flow
        feature size is at most 64, Hutchinson otherwise); see :class:`JKOBlock`.
    n_probes : int
        Hutchinson probes.
    sigma, means
        Latent standard deviation and ``(K, d)`` class means (``means``: laws of classes only).
    latent : str
        The latent law of conditional models by its name in :data:`~dgl_iflow.latents.LAWS`;
        ``"linear_gaussian"`` takes real-valued targets instead of classes, with ``num_classes=None``.
    label_dim : int, optional
        Real-valued targets only: ``q`` targets per node, ``(N, V, q)``; ``None`` for one,
        ``(N, V)``.
    """

    checkpoint_format = CHECKPOINT_FORMAT
    inverse_tol = 1e-4

    def __init__(
        self,
        graph: GraphLike,
        feats: int,
        num_classes: int | None = None,
        *,
        conv: str = "l3",
        hidden_feats: Sequence[int] = (64, 64),
        orders: Sequence[int] = (0, 1, 2),
        cheb_k: int = 3,
        node_bias: bool = True,
        activation: str = "tanh",
        steps: int = 3,
        divergence: str = "auto",
        n_probes: int = 1,
        solver: str = "dopri5",
        rtol: float = 1e-8,
        atol: float = 1e-10,
        sigma: float = 1.0,
        means: Tensor | Sequence[Sequence[float]] | None = None,
        latent: str = "node_gaussian",
        label_dim: int | None = None,
    ) -> None:
        if not hidden_feats:
            raise ValueError("hidden_feats needs at least the width of the convolution output")
        super().__init__(graph, feats, conv)
        flow_feats = self.flow_feats
        if divergence == "auto":
            divergence = "exact" if flow_feats <= EXACT_DIVERGENCE_MAX_FEATS else "hutchinson"
        self.divergence = divergence
        self.solver = solver
        self.field_spec = FieldSpec(
            feats=flow_feats, conv=self.conv_kind, conv_feats=hidden_feats[0],
            hidden_feats=tuple(hidden_feats[1:]),
            k=cheb_k, orders=tuple(orders), node_bias=node_bias, activation=activation,
            graph=graph if CONVS[self.conv_kind].needs_graph else None,
        )
        # Built with their means fixed: fit_jko trains each block's field alone, so whatever a law
        # could learn (a label or target context) keeps its start, where it moves no mean.
        self.latent = self.build_latent(num_classes, sigma, means, latent, label_dim=label_dim)

    # -- structure --------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        """The :class:`JKOBlock` units of :attr:`flow`, in time order."""
        return self.flow.blocks

    @property
    def time_grid(self) -> list[float]:
        """:math:`t_0, \\dots, t_K`: the block boundaries, empty without blocks."""
        return [self.blocks[0].t0, *(block.t1 for block in self.blocks)] if self.blocks else []

    @property
    def step_sizes(self) -> list[float]:
        """:math:`h_k = t_{k+1} - t_k` of every block."""
        return [block.h for block in self.blocks]

    def new_block(self, t0: float, t1: float) -> JKOBlock:
        """A block on ``[t0, t1]`` with a fresh velocity field (the identity map), not yet added.

        The field's output is scaled by :math:`1 / (t_1 - t_0)`, see ``GraphVelocityField``.
        """
        config = self.config
        block = JKOBlock(self.field_spec.build(output_scale=1.0 / (t1 - t0)), t0, t1, steps=config["steps"],
                         divergence=self.divergence, n_probes=config["n_probes"], solver=self.solver,
                         rtol=config["rtol"], atol=config["atol"])
        return block.to(self.device, self.dtype)

    def set_solver(self, solver: str) -> None:
        """Switch every block, and blocks added later, to ``"rk4"`` or ``"dopri5"`` (see :class:`JKOBlock`)."""
        for block in self.blocks:
            block.set_solver(solver)
        self.solver = solver

    def set_divergence(self, mode: str) -> None:
        """Switch every block, and blocks added later, to ``"exact"``, ``"autograd"`` or ``"hutchinson"``."""
        for block in self.blocks:
            block.set_divergence(mode)
        self.divergence = mode

    # -- checkpoints ------------------------------------------------------

    def checkpoint_structure(self) -> dict[str, Any]:
        """The blocks' time intervals, and the solver and divergence they and later blocks use."""
        return dict(intervals=[(block.t0, block.t1) for block in self.blocks], solver=self.solver,
                    divergence=self.divergence)

    def restore_structure(self, structure: dict[str, Any]) -> None:
        """Fresh blocks on the saved intervals (replacing any), ready for the saved weights."""
        self.solver = structure.get("solver", self.solver)
        self.divergence = structure.get("divergence", self.divergence)
        del self.blocks[:len(self.blocks)]
        self.blocks.extend(self.new_block(t0, t1) for t0, t1 in structure.get("intervals", []))
