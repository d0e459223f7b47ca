"""JKO-iFlow on graphs: a chain of continuous-time blocks with the interface of :class:`~dgl_iflow.IGNN`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._backend import dgl
from .latent import NodeGaussianLatent
from ..transforms.resblock import check_finite
from .layout import flatten_nodes, single_node_graph, unflatten_nodes
from ..transforms.ode_block import JKOBlock
from ..transforms.velocity import FieldSpec

CONVS = ("l3", "cheb", "mlp", "node")

#: Largest flow feature size (``d``, or ``V d`` for ``conv="mlp"``) for which
#: ``divergence="auto"`` picks the exact divergence, whose cost is that many forward passes.
EXACT_DIVERGENCE_MAX_FEATS = 64

CHECKPOINT_FORMAT = "dgl_iflow.JKOFlow/1"


class JKOFlow(nn.Module):
    r"""Normalizing flow of node features built from JKO steps (Xu, Cheng, Xie 2023).

    Block :math:`k` is the flow map of an ODE :math:`\dot x = f_k(x, t)` over
    :math:`[t_k, t_{k+1}]` (:class:`JKOBlock`); the chain :math:`F` maps features to a latent
    :math:`H = F(X)` and, with :math:`\ell_k` the integrated divergences,

    .. math::
        \log p(X \mid Y) = \log q(F(X) \mid Y) + \sum_k \ell_k(X),

    where :math:`q` is the class-conditional :class:`NodeGaussianLatent` (with ``num_classes``)
    or :math:`N(0, I)` (unconditional, ``num_classes=None``). Blocks are added and trained one
    at a time by :func:`~dgl_iflow.fit_jko`; a new model has none and is the identity.

    Parameters
    ----------
    graph : DGLGraph
        The shared graph of :math:`V` nodes.
    feats : int
        Node feature size :math:`d`.
    num_classes : int, optional
        Number of node classes :math:`K`; ``None`` for an unconditional flow.
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
        RK4 sub-steps :math:`S` of every block.
    divergence : str
        ``"exact"``, ``"autograd"``, ``"hutchinson"`` or ``"auto"`` (exact when the flow
        feature size is at most 64, Hutchinson otherwise); see :class:`JKOBlock`.
    n_probes : int
        Hutchinson probes.
    sigma, means
        Latent standard deviation and ``(K, d)`` class means (conditional models).
    """

    def __init__(
        self,
        graph: dgl.DGLGraph,
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
        sigma: float = 1.0,
        means: Tensor | Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
        if not hidden_feats:
            raise ValueError("hidden_feats needs at least the width of the convolution output")
        self.config: dict[str, Any] = dict(
            feats=feats, num_classes=num_classes, conv=conv, hidden_feats=list(hidden_feats),
            orders=list(orders), cheb_k=cheb_k, node_bias=node_bias, activation=activation, steps=steps,
            divergence=divergence, n_probes=n_probes, sigma=sigma,
            means=None if means is None else torch.as_tensor(means).tolist(),
        )
        self.graph = graph
        self.num_nodes = graph.num_nodes()
        self.feats = feats
        flow_feats = self.num_nodes * feats if conv == "mlp" else feats
        if divergence == "auto":
            divergence = "exact" if flow_feats <= EXACT_DIVERGENCE_MAX_FEATS else "hutchinson"
        self.divergence = divergence
        self._flow_graph = single_node_graph() if conv == "mlp" else graph
        self.field_spec = FieldSpec(
            feats=flow_feats, conv="node" if conv == "mlp" else conv, conv_feats=hidden_feats[0],
            hidden_feats=tuple(hidden_feats[1:]),
            k=cheb_k, orders=tuple(orders), node_bias=node_bias, activation=activation,
            graph=graph if conv == "l3" else None,
        )
        self.blocks = nn.ModuleList()
        # Follows .to() and .double() even before the first block exists, so new blocks match.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)
        self.latent = None if num_classes is None else NodeGaussianLatent(
            num_classes, feats, sigma=sigma,
            means=None if means is None else torch.as_tensor(means, dtype=torch.get_default_dtype()),
            num_nodes=self.num_nodes,
        )

    # -- structure --------------------------------------------------------

    @property
    def num_classes(self) -> int | None:
        return None if self.latent is None else self.latent.num_classes

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
        block = JKOBlock(self.field_spec.build(output_scale=1.0 / (t1 - t0)), t0, t1, steps=self.config["steps"],
                         divergence=self.divergence, n_probes=self.config["n_probes"])
        return block.to(self._anchor.device, self._anchor.dtype)

    def set_divergence(self, mode: str) -> None:
        """Switch every block, and blocks added later, to ``"exact"``, ``"autograd"`` or ``"hutchinson"``."""
        for block in self.blocks:
            block.set_divergence(mode)
        self.divergence = mode

    def flow_graph(self) -> dgl.DGLGraph:
        """The graph the blocks run on (a single node for ``conv="mlp"``)."""
        return self._flow_graph

    def to_flow(self, x: Tensor) -> Tensor:
        """Features ``(V, *, d)`` in the layout of the blocks (``(1, *, V d)`` for ``"mlp"``)."""
        return flatten_nodes(x) if self.config["conv"] == "mlp" else x

    def from_flow(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`to_flow`."""
        return unflatten_nodes(z, self.num_nodes) if self.config["conv"] == "mlp" else z

    # -- densities --------------------------------------------------------

    def _check_x(self, graph: dgl.DGLGraph, x: Tensor, name: str = "x") -> None:
        if graph.num_nodes() != self.num_nodes:
            raise ValueError(f"this JKOFlow was built for a graph of {self.num_nodes} nodes, got {graph.num_nodes()}")
        if x.dim() < 3 or x.shape[0] != self.num_nodes or x.shape[-1] != self.feats:
            raise ValueError(
                f"{name} must have shape (V, B, d) = ({self.num_nodes}, B, {self.feats}), got {tuple(x.shape)}"
            )
        check_finite(x, name)

    def _check_y(self, x: Tensor, y: Tensor | None) -> None:
        if (y is None) != (self.latent is None):
            raise ValueError("labels are needed by a conditional JKOFlow and refused by an unconditional one")
        if y is not None and y.shape != x.shape[:-1]:
            raise ValueError(f"labels must have shape (V, B) = {tuple(x.shape[:-1])}, got {tuple(y.shape)}")

    def potential(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        r""":math:`-\log q(H \mid Y)` per sample, shape ``(*,)``, for latents ``(V, *, d)``.

        The target of the JKO scheme: the free energy it decreases is
        :math:`\mathrm{KL}(p \,\|\, q) = \mathbb{E}_p[\log p + \mathrm{potential}]`.
        """
        if self.latent is not None:
            return -self.latent.log_prob(h, y)
        return 0.5 * h.pow(2).sum(dim=(0, -1)) + 0.5 * h.shape[0] * h.shape[-1] * math.log(2 * math.pi)

    def latent_mean(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean of the latent law of ``h`` (``(V, *, d)``): the class means of ``y``, or zeros."""
        if self.latent is None:
            return torch.zeros_like(h)
        return self.latent.means[y].expand_as(h)

    def encode(self, graph: dgl.DGLGraph, x: Tensor, jac: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        """Latent :math:`H = F(X)` of shape ``(V, *, d)``, summed log-det and transport cost per sample.

        The transport cost is :math:`\\sum_k \\|x(t_{k+1}) - x(t_k)\\|^2`.
        """
        self._check_x(graph, x)
        z = self.to_flow(x)
        flow_graph = self._flow_graph if self.config["conv"] == "mlp" else graph
        logdet = torch.zeros(x.shape[1:-1], dtype=x.dtype, device=x.device) if jac else None
        transport = torch.zeros(x.shape[1:-1], dtype=x.dtype, device=x.device)
        for block in self.blocks:
            z_next, block_logdet = block(flow_graph, z, logdet=jac)
            transport = transport + (z_next - z).pow(2).sum(dim=(0, -1))
            if jac:
                logdet = logdet + block_logdet
            z = z_next
        return self.from_flow(z), logdet, transport

    def log_prob(self, graph: dgl.DGLGraph, x: Tensor, y: Tensor | None = None) -> Tensor:
        """:math:`\\log p(X \\mid Y)` (or :math:`\\log p(X)`) per sample, shape ``(B,)``.

        Exact with ``divergence`` ``"exact"`` or ``"autograd"``; an unbiased estimate of it
        with ``"hutchinson"``.
        """
        self._check_x(graph, x)
        self._check_y(x, y)
        h, logdet, _ = self.encode(graph, x)
        return -self.potential(h, y) + logdet

    @torch.no_grad()
    def predict_proba(self, graph: dgl.DGLGraph, x: Tensor) -> Tensor:
        """:math:`P(Y_v = k \\mid X)` for every node, shape ``(V, *, K)`` (conditional models)."""
        if self.latent is None:
            raise ValueError("an unconditional JKOFlow has no classes to predict")
        h, _, _ = self.encode(graph, x, jac=False)
        return self.latent.posterior(h)

    # -- generation -------------------------------------------------------

    @torch.no_grad()
    def generate(self, graph: dgl.DGLGraph, h: Tensor) -> Tensor:
        """:math:`F^{-1}(H)` for latents ``h`` of shape ``(V, *, d)``: every block backward in time."""
        self._check_x(graph, h, "h")
        z = self.to_flow(h)
        flow_graph = self._flow_graph if self.config["conv"] == "mlp" else graph
        for block in reversed(self.blocks):
            z, _ = block.inverse(flow_graph, z)
        return self.from_flow(z)

    @torch.no_grad()
    def sample(
        self,
        graph: dgl.DGLGraph,
        y: Tensor | None = None,
        n: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` samples of :math:`X \\mid Y = y` for a label vector ``y`` of shape ``(V,)``.

        Unconditional models take ``y=None`` and sample :math:`F^{-1}(Z)`,
        :math:`Z \\sim N(0, I)`. Returns shape ``(V, n, d)``.
        """
        if graph.num_nodes() != self.num_nodes:
            raise ValueError(f"this JKOFlow was built for a graph of {self.num_nodes} nodes, got {graph.num_nodes()}")
        if self.latent is None:
            if y is not None:
                raise ValueError("an unconditional JKOFlow samples without labels: pass y=None")
            h = torch.randn(self.num_nodes, n, self.feats, generator=generator,
                            dtype=self._anchor.dtype, device=self._anchor.device)
        else:
            if y is None or y.shape != (self.num_nodes,):
                raise ValueError(f"y must be one label vector of shape ({self.num_nodes},), got "
                                 f"{None if y is None else tuple(y.shape)}")
            h = self.latent.sample(y.to(self.latent.means.device), n, generator=generator)
        return self.generate(graph, h)

    @torch.no_grad()
    def round_trip_error(self, graph: dgl.DGLGraph, x: Tensor) -> Tensor:
        """Largest absolute error of :math:`F^{-1}(F(X))` per sample, shape ``(*,)``.

        The backward RK4 map inverts the forward one only up to :math:`O(S^{-4})`.
        """
        h, _, _ = self.encode(graph, x, jac=False)
        return (self.generate(graph, h) - x).abs().amax(dim=(0, -1))

    # -- checkpoints ------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Configuration, graph, time grid and weights: everything :meth:`from_checkpoint` needs."""
        src, dst = self.graph.edges()
        return dict(
            format=CHECKPOINT_FORMAT, config=self.config,
            graph=dict(num_nodes=self.num_nodes, src=src.cpu(), dst=dst.cpu()),
            intervals=[(block.t0, block.t1) for block in self.blocks], state_dict=self.state_dict(),
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], graph: dgl.DGLGraph | None = None) -> JKOFlow:
        """Rebuild a model from :meth:`checkpoint` (on its own graph unless one is given)."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"not a JKOFlow checkpoint: format {checkpoint.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
            )
        saved = checkpoint["graph"]
        if graph is None:
            graph = dgl.graph((saved["src"], saved["dst"]), num_nodes=saved["num_nodes"])
        model = cls(graph, **checkpoint["config"])
        for t0, t1 in checkpoint["intervals"]:
            model.blocks.append(model.new_block(t0, t1))
        model.load_state_dict(checkpoint["state_dict"])
        return model
