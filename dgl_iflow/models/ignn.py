"""iGNN: one invertible graph flow for conditional generation, prediction and uncertainty."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._backend import dgl
from ..checkpoints import atomic_save, read_checkpoint
from .latent import NodeGaussianLatent
from ..layers import ChebConv, L3Conv, NodewiseConv
from ..transforms import GraphFlow, GraphResidual, InvertibleResBlock, NodeAffine
from ..transforms.resblock import check_finite
from .layout import flatten_nodes, single_node_graph, unflatten_nodes

CONVS = ("l3", "cheb", "mlp")

#: Largest number of flow dimensions (V * d) for which ``logdet="auto"`` picks the exact log-det.
EXACT_LOGDET_MAX_DIM = 64

CHECKPOINT_FORMAT = "dgl_iflow.IGNN/1"


class IGNN(nn.Module):
    r"""Invertible graph neural network for node-level conditional generation (Xu, Cheng, Xie 2022).

    One invertible flow :math:`F` maps node features :math:`X \in \mathbb{R}^{V \times d}` to a
    latent :math:`H = F(X)` of the same shape whose law given the labels is node-factorized:
    :math:`H_v \mid Y_v = k \sim N(\mu_k, \sigma^2 I_d)` (:class:`NodeGaussianLatent`). Then

    .. math::
        \log p(X \mid Y) = \sum_v \log N(F(X)_v; \mu_{Y_v}, \sigma^2 I)
                           + \log|\det J_F(X)|,

    :math:`X \mid Y` is generated as :math:`F^{-1}(H)` with :math:`H \sim p(H \mid Y)`, and
    :math:`P(Y_v = k \mid X)` is Bayes' rule applied to :math:`F(X)_v`.

    Parameters
    ----------
    graph : DGLGraph
        The shared graph of :math:`V` nodes.
    feats : int
        Node feature size :math:`d`.
    num_classes : int
        Number of node classes :math:`K`.
    conv : str
        ``"l3"`` (spatial :class:`L3Conv`), ``"cheb"`` (spectral :class:`ChebConv`) or
        ``"mlp"`` (graph-free baseline: the :math:`V d` features of a sample form one vector).
    num_blocks : int
        Number of invertible residual blocks :math:`L`.
    hidden_feats : sequence of int
        Width of the convolution output followed by the node-wise hidden widths, e.g.
        ``(64, 64)``: conv :math:`d \to 64`, linear :math:`64 \to 64`, linear :math:`64 \to d`.
    orders : sequence of int
        Hop orders of the L3Conv bases.
    cheb_k : int
        Chebyshev terms of ChebConv.
    activation : str
        ``"lipswish"`` or ``"elu"``.
    logdet : str
        ``"exact"``, ``"estimator"`` or ``"auto"`` (exact when :math:`V d \le 64`).
    sigma : float
        Latent standard deviation :math:`\sigma`.
    means : Tensor, optional
        ``(K, d)`` latent class means; placed automatically far apart when absent.
    trainable_means : bool
        Learn the means, kept apart by a log-barrier.
    min_separation : float, optional
        Distance the barrier keeps trainable means apart; by default the one that keeps every
        node on its own mean's side with probability 0.99 (:func:`~dgl_iflow.models.latent.default_separation`), which
        claims classes separate almost surely. A small value lets the data choose the gap, and
        with it the latent's Bayes error per node.
    init_scale : float
        Factor applied to the last layer of every residual function at initialization; a
        small value starts the flow near the identity, safely invertible.
    lipschitz_coeff : float, optional
        Spectral normalization of every layer so that :math:`\mathrm{Lip}(g) \le c` in every
        block: invertible by construction, and the fixed-point inverse converges at rate
        :math:`c`. ``None`` leaves invertibility to the transport cost and the trainer's
        inversion checks, as the paper did.
    node_bias : bool
        L3Conv only: a bias per node (see :class:`L3Conv`), so blocks can translate nodes
        differently.
    graph_mean : bool
        Give every convolution the graph-wide mean as one more operator (see
        :class:`~dgl_iflow.layers.BasisConv`): blocks can model correlation across all nodes.
    node_affine : bool
        End the flow with a :class:`~dgl_iflow.layers.NodeAffine` layer: a per-node scale and
        shift at the latent end, free of transport cost.

    Notes
    -----
    Features follow the layers' layout ``(V, *, d)`` and labels ``(V, *)``.
    """

    def __init__(
        self,
        graph: dgl.DGLGraph,
        feats: int,
        num_classes: int,
        *,
        conv: str = "l3",
        num_blocks: int = 8,
        hidden_feats: Sequence[int] = (64, 64),
        orders: Sequence[int] = (0, 1, 2),
        cheb_k: int = 3,
        activation: str = "lipswish",
        logdet: str = "auto",
        sigma: float = 1.0,
        means: Tensor | Sequence[Sequence[float]] | None = None,
        trainable_means: bool = False,
        min_separation: float | None = None,
        init_scale: float = 0.5,
        lipschitz_coeff: float | None = None,
        node_bias: bool = True,
        graph_mean: bool = False,
        node_affine: bool = False,
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
        if num_blocks < 1 or not hidden_feats:
            raise ValueError(f"need num_blocks >= 1 and a non-empty hidden_feats, got {num_blocks}, {hidden_feats}")
        num_nodes = graph.num_nodes()
        self.config: dict[str, Any] = dict(
            feats=feats, num_classes=num_classes, conv=conv, num_blocks=num_blocks,
            hidden_feats=list(hidden_feats), orders=list(orders), cheb_k=cheb_k,
            activation=activation, logdet=logdet, sigma=sigma,
            means=None if means is None else torch.as_tensor(means).tolist(),
            trainable_means=trainable_means, min_separation=min_separation, init_scale=init_scale, lipschitz_coeff=lipschitz_coeff,
            node_bias=node_bias, graph_mean=graph_mean, node_affine=node_affine,
        )
        self.graph = graph
        self.num_nodes = num_nodes
        self.feats = feats
        if logdet == "auto":
            logdet = "exact" if num_nodes * feats <= EXACT_LOGDET_MAX_DIM else "estimator"
        self._flow_graph = single_node_graph() if conv == "mlp" else graph
        flow_feats = num_nodes * feats if conv == "mlp" else feats

        def make_conv() -> nn.Module:
            if conv == "l3":
                return L3Conv(flow_feats, hidden_feats[0], graph, orders=orders, node_bias=node_bias,
                              graph_mean=graph_mean)
            if conv == "cheb":
                return ChebConv(flow_feats, hidden_feats[0], k=cheb_k, graph_mean=graph_mean)
            return NodewiseConv(flow_feats, hidden_feats[0])

        blocks = []
        for _ in range(num_blocks):
            residual = GraphResidual(make_conv(), hidden_feats=hidden_feats[1:], activation=activation,
                                     lipschitz_coeff=lipschitz_coeff)
            with torch.no_grad():
                residual.linears[-1].weight.mul_(init_scale)
            blocks.append(InvertibleResBlock(residual, logdet=logdet))
        if node_affine:
            blocks.append(NodeAffine(self._flow_graph.num_nodes(), flow_feats))
        self.flow = GraphFlow(blocks)
        self.latent = NodeGaussianLatent(
            num_classes, feats, sigma=sigma,
            means=None if means is None else torch.as_tensor(means, dtype=torch.get_default_dtype()),
            trainable_means=trainable_means, min_separation=min_separation, num_nodes=num_nodes,
        )

    @property
    def num_classes(self) -> int:
        return self.latent.num_classes

    @property
    def logdet_mode(self) -> str:
        """``"exact"`` or ``"estimator"``: how :meth:`log_prob` computes the log-determinant."""
        return self.flow.blocks[0].logdet_mode

    # -- layout -----------------------------------------------------------

    def _check_graph(self, graph: dgl.DGLGraph) -> None:
        if graph.num_nodes() != self.num_nodes:
            raise ValueError(
                f"this IGNN was built for a graph of {self.num_nodes} nodes, got one of {graph.num_nodes()}"
            )

    def _check_x(self, graph: dgl.DGLGraph, x: Tensor, name: str = "x") -> None:
        self._check_graph(graph)
        if x.dim() < 3 or x.shape[0] != self.num_nodes or x.shape[-1] != self.feats:
            raise ValueError(
                f"{name} must have shape (V, B, d) = ({self.num_nodes}, B, {self.feats}), got {tuple(x.shape)}"
            )
        if x[0].numel() == 0:
            raise ValueError(f"{name} is an empty batch: shape {tuple(x.shape)}")
        check_finite(x, name)

    def _check_y(self, x: Tensor, y: Tensor) -> None:
        if y.shape != x.shape[:-1]:
            raise ValueError(
                f"labels must have shape (V, B) = {tuple(x.shape[:-1])} to match features "
                f"{tuple(x.shape)}, got {tuple(y.shape)}"
            )

    def _graph_for_flow(self, graph: dgl.DGLGraph) -> dgl.DGLGraph:
        return self._flow_graph if self.config["conv"] == "mlp" else graph

    def _to_flow(self, x: Tensor) -> Tensor:
        return flatten_nodes(x) if self.config["conv"] == "mlp" else x

    def _from_flow(self, z: Tensor) -> Tensor:
        return unflatten_nodes(z, self.num_nodes) if self.config["conv"] == "mlp" else z

    # -- the model --------------------------------------------------------

    def encode(self, graph: dgl.DGLGraph, x: Tensor, jac: bool = True):
        """Latent :math:`H = F(X)` of shape ``(V, *, d)``, log-det and transport cost per sample."""
        self._check_x(graph, x)
        z, logdet, transport = self.flow(self._graph_for_flow(graph), self._to_flow(x), jac=jac)
        return self._from_flow(z), logdet, transport

    def log_prob(self, graph: dgl.DGLGraph, x: Tensor, y: Tensor) -> Tensor:
        """:math:`\\log p(X \\mid Y)` per sample, shape ``(B,)``.

        Uses the exact log-determinant or, for large graphs, the unbiased estimator
        (:attr:`logdet_mode` says which).
        """
        self._check_x(graph, x)
        self._check_y(x, y)
        h, logdet, _ = self.encode(graph, x)
        return self.latent.log_prob(h, y) + logdet

    def loss(
        self,
        graph: dgl.DGLGraph,
        x: Tensor,
        y: Tensor,
        classification_weight: float = 0.1,
        transport_weight: float = 1.0,
    ) -> dict[str, Tensor]:
        r"""Training objective :math:`L_g + \mu L_c + \gamma W` averaged over the batch.

        Returns a dict with ``loss`` and its terms: ``nll`` (negative log-likelihood per
        sample), ``ce`` (cross-entropy of the latent posterior, per node), ``transport``
        (summed over blocks) and ``barrier`` (trainable means only).
        """
        self._check_x(graph, x)
        self._check_y(x, y)
        h, logdet, transport = self.encode(graph, x)
        nll = -(self.latent.log_prob(h, y) + logdet).mean()
        log_post = self.latent.log_posterior(h)
        ce = nn.functional.nll_loss(log_post.reshape(-1, self.num_classes), y.reshape(-1))
        transport = transport.mean()
        barrier = self.latent.barrier_penalty()
        loss = nll + classification_weight * ce + transport_weight * transport + barrier
        return dict(loss=loss, nll=nll, ce=ce, transport=transport, barrier=barrier)

    @torch.no_grad()
    def predict_proba(self, graph: dgl.DGLGraph, x: Tensor) -> Tensor:
        """:math:`P(Y_v = k \\mid X)` for every node, shape ``(V, *, K)``."""
        h, _, _ = self.encode(graph, x, jac=False)
        return self.latent.posterior(h)

    @torch.no_grad()
    def generate(
        self,
        graph: dgl.DGLGraph,
        h: Tensor,
        tol: float = 1e-5,
        max_iter: int = 1000,
        on_failure: str = "raise",
    ) -> Tensor:
        """:math:`F^{-1}(H)` for latents ``h`` of shape ``(V, *, d)``."""
        self._check_graph(graph)
        if h.dim() < 3 or h.shape[0] != self.num_nodes or h.shape[-1] != self.feats:
            raise ValueError(f"h must have shape (V, B, d) = ({self.num_nodes}, B, {self.feats}), got {tuple(h.shape)}")
        z = self.flow.inverse(self._graph_for_flow(graph), self._to_flow(h), tol=tol, max_iter=max_iter, on_failure=on_failure)
        return self._from_flow(z)

    @torch.no_grad()
    def sample(
        self,
        graph: dgl.DGLGraph,
        y: Tensor,
        n: int,
        generator: torch.Generator | None = None,
        tol: float = 1e-5,
        max_iter: int = 1000,
    ) -> Tensor:
        """``n`` samples of :math:`X \\mid Y = y` for a label vector ``y`` of shape ``(V,)``.

        Returns shape ``(V, n, d)``. Raises :class:`~dgl_iflow.layers.InversionError` if the
        inverse does not reach ``tol``.
        """
        self._check_graph(graph)
        if y.shape != (self.num_nodes,):
            raise ValueError(f"y must be one label vector of shape ({self.num_nodes},), got {tuple(y.shape)}")
        h = self.latent.sample(y.to(self.latent.means.device), n, generator=generator)
        return self.generate(graph, h, tol=tol, max_iter=max_iter)

    @torch.no_grad()
    def uncertainty_set(
        self, graph: dgl.DGLGraph, y: Tensor, level: float = 0.9, num_points: int = 200,
        generator: torch.Generator | None = None, max_iter: int = 1000,
    ) -> Tensor:
        r"""Points on the boundary of the feature-space uncertainty set of :math:`X \mid Y = y`.

        The set is :math:`F^{-1}` of the product over nodes of the latent balls
        :math:`\|H_v - \mu_{y_v}\| \le r` that hold ``level`` of each node's mass; its
        boundary points have every node on its sphere (directions evenly spaced for
        :math:`d = 2`, uniform otherwise). Returns ``(V, num_points, d)``, for plotting.
        """
        centers, radius = self.latent.confidence_region(y.to(self.latent.means.device), level)
        if self.feats == 2:
            angle = torch.linspace(0, 2 * math.pi, num_points, dtype=centers.dtype, device=centers.device)
            direction = torch.stack([angle.cos(), angle.sin()], -1).expand(self.num_nodes, -1, -1)
        else:
            direction = torch.randn(self.num_nodes, num_points, self.feats, generator=generator,
                                    dtype=centers.dtype, device=centers.device)
            direction = direction / direction.norm(dim=-1, keepdim=True)
        return self.generate(graph, centers.unsqueeze(1) + radius * direction, max_iter=max_iter)

    @torch.no_grad()
    def in_uncertainty_set(self, graph: dgl.DGLGraph, x: Tensor, y: Tensor, level: float = 0.9) -> Tensor:
        """Whether each node of each sample lies in its uncertainty set, bool ``(V, *)``."""
        self._check_y(x, y)
        h, _, _ = self.encode(graph, x, jac=False)
        return self.latent.contains(h, y, level)

    # -- checkpoints ------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`from_checkpoint` needs: format, configuration, graph and weights."""
        src, dst = self.graph.edges()
        return dict(
            format=CHECKPOINT_FORMAT, config=self.config,
            graph=dict(num_nodes=self.num_nodes, src=src.cpu(), dst=dst.cpu()),
            state_dict=self.state_dict(),
        )

    def save(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write :meth:`checkpoint` plus ``extra`` entries to ``path`` atomically."""
        atomic_save({**self.checkpoint(), **extra}, path)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], graph: dgl.DGLGraph | None = None) -> IGNN:
        """Rebuild the model saved in ``checkpoint`` (on its own graph unless one is given)."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not an IGNN checkpoint: format {checkpoint.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        saved = checkpoint["graph"]
        if graph is None:
            graph = dgl.graph((saved["src"], saved["dst"]), num_nodes=saved["num_nodes"])
        model = cls(graph, **checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, graph: dgl.DGLGraph | None = None) -> IGNN:
        """Read a model written by :meth:`save`, without running code from the file.

        Raises :class:`~dgl_iflow.checkpoints.CheckpointError` for a file that is unreadable,
        carries anything beyond tensors and plain containers, or needs converting.
        """
        return cls.from_checkpoint(read_checkpoint(path), graph)

    def load_weights(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load weights saved by :meth:`save` into this model; the configurations must match.

        Returns the whole checkpoint, so callers can read their ``extra`` entries.
        """
        checkpoint = read_checkpoint(path)
        if checkpoint.get("config") != self.config:
            differences = {
                key: (checkpoint.get("config", {}).get(key), value)
                for key, value in self.config.items()
                if checkpoint.get("config", {}).get(key) != value
            }
            raise ValueError(
                f"checkpoint {path} was written by another configuration; (saved, this model) "
                f"differ in {differences}"
            )
        self.load_state_dict(checkpoint["state_dict"])
        return checkpoint
