"""iGNN: one invertible graph flow for conditional generation, prediction and uncertainty."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..graphs import GraphLike
from ..layers import make_conv
from ..transforms import GraphFlow, GraphMeanLinear, GraphResidual, InvertibleResBlock, NodeAffine
from .base import FlowModel

#: Largest number of flow dimensions (V * d) for which ``logdet="auto"`` picks the exact log-det.
EXACT_LOGDET_MAX_DIM = 64

CHECKPOINT_FORMAT = "dgl_iflow.IGNN/1"


class IGNN(FlowModel):
    r"""Invertible graph neural network for node-level conditional generation (Xu, Cheng, Xie 2022).

    One invertible flow :math:`F` maps node features :math:`X \in \mathbb{R}^{V \times d}` to a
    latent :math:`H = F(X)` of the same shape whose law given the labels is node-factorized:
    :math:`H_v \mid Y_v = k \sim N(\mu_k, \sigma^2 I_d)` (:class:`~dgl_iflow.latents.NodeGaussianLatent`). Then

    .. math::
        \log p(X \mid Y) = \sum_v \log N(F(X)_v; \mu_{Y_v}, \sigma^2 I)
                           + \log|\det J_F(X)|,

    :math:`X \mid Y` is generated as :math:`F^{-1}(H)` with :math:`H \sim p(H \mid Y)`, and
    :math:`P(Y_v = k \mid X)` is Bayes' rule applied to :math:`F(X)_v`.

    Parameters
    ----------
    graph : GraphLike
        The shared graph of :math:`V` nodes.
    feats : int
        Node feature size :math:`d`.
    num_classes : int, optional
        Number of node classes :math:`K`; ``None`` with a law of real-valued targets
        (``latent="linear_gaussian"``), or for an unconditional model.
    conv : str
        ``"l3"`` (spatial :class:`L3Conv`), ``"cheb"`` (spectral :class:`ChebConv`), ``"node"``
        (:class:`NodewiseConv`: no message passing) or ``"mlp"`` (graph-free baseline: the
        :math:`V d` features of a sample form one vector); see
        :data:`~dgl_iflow.models.base.CONVS`.
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
        ``"lipswish"``, ``"elu"``, ``"tanh"`` or ``"softplus"`` (all 1-Lipschitz; the first two
        have the fused exact Jacobian).
    logdet : str
        ``"exact"``, ``"estimator"`` or ``"auto"`` (exact when :math:`V d \le 64`).
    sigma : float
        Latent standard deviation :math:`\sigma`.
    means : Tensor, optional
        ``(K, d)`` latent class means; placed automatically far apart when absent.
    trainable_means : bool
        Learn the means, kept apart by a log-barrier; for real-valued targets, learn the map
        :math:`A y + b` of :class:`~dgl_iflow.latents.LinearGaussianLatent`.
    min_separation : float, optional
        Distance the barrier keeps trainable means apart; by default the one that keeps every
        node on its own mean's side with probability 0.99 (:func:`~dgl_iflow.latents.default_separation`), which
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
        End the flow with a :class:`~dgl_iflow.transforms.NodeAffine` layer: a per-node scale and
        shift at the latent end, free of transport cost.
    graph_mean_linear : bool
        Start the flow with a :class:`~dgl_iflow.transforms.GraphMeanLinear` layer: its own
        linear map for the graph-wide mean and for the deviations from it, whitened on the
        training data by :func:`~dgl_iflow.training.fit`. Not for ``conv="mlp"`` (one node).
    label_context : bool
        Shift every node's latent mean by a learned linear map of the whole label vector, and
        predict by Bayes' rule over the training set's label vectors (the law
        :class:`~dgl_iflow.latents.LabelContextLatent`; :func:`~dgl_iflow.training.fit`
        records them). On traffic it improves both the samples and the node accuracy
        (``docs/reproduce.md``, the recipe). The same as ``latent="label_context"``.
    latent : str, optional
        The latent law by its name in :data:`~dgl_iflow.latents.LAWS`, built with ``sigma``,
        ``means``, ``trainable_means`` and ``min_separation``; by default ``"label_context"``
        with ``label_context``, else ``"node_gaussian"``. ``"linear_gaussian"`` takes
        real-valued targets instead of classes (:meth:`predict`, :meth:`predict_interval`).
    label_dim : int, optional
        Real-valued targets only: ``q`` targets per node, ``(N, V, q)``; ``None`` for one,
        ``(N, V)``.

    Notes
    -----
    The interface (densities, prediction, generation, uncertainty sets, checkpoints) is
    :class:`~dgl_iflow.models.base.FlowModel`'s: sample-first features ``(N, V, d)`` and labels
    ``(N, V)`` (real-valued targets ``(N, V)`` or ``(N, V, q)``).
    """

    checkpoint_format = CHECKPOINT_FORMAT
    inverse_tol = 1e-5

    def __init__(
        self,
        graph: GraphLike,
        feats: int,
        num_classes: int | None = None,
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
        graph_mean_linear: bool = False,
        label_context: bool = False,
        latent: str | None = None,
        label_dim: int | None = None,
    ) -> None:
        if num_blocks < 1 or not hidden_feats:
            raise ValueError(f"need num_blocks >= 1 and a non-empty hidden_feats, got {num_blocks}, {hidden_feats}")
        super().__init__(graph, feats, conv)
        if graph_mean_linear and self.flatten:
            raise ValueError('graph_mean_linear needs a graph: conv="mlp" sees one node')
        if latent is None:
            latent = "label_context" if label_context else "node_gaussian"
        elif label_context and latent != "label_context":
            raise ValueError(f"label_context=True builds the label-context law, not latent={latent!r}")
        num_nodes = self.num_nodes
        if logdet == "auto":
            logdet = "exact" if num_nodes * feats <= EXACT_LOGDET_MAX_DIM else "estimator"
        flow_feats = self.flow_feats

        blocks = [GraphMeanLinear(flow_feats)] if graph_mean_linear else []
        for _ in range(num_blocks):
            layer = make_conv(self.conv_kind, flow_feats, hidden_feats[0], graph, cheb_k=cheb_k, orders=orders,
                              node_bias=node_bias, graph_mean=graph_mean)
            residual = GraphResidual(layer, hidden_feats=hidden_feats[1:], activation=activation,
                                     lipschitz_coeff=lipschitz_coeff)
            with torch.no_grad():
                residual.linears[-1].weight.mul_(init_scale)
            blocks.append(InvertibleResBlock(residual, logdet=logdet))
        if node_affine:
            blocks.append(NodeAffine(1 if self.flatten else num_nodes, flow_feats))
        self.flow = GraphFlow(blocks)
        self.latent = self.build_latent(num_classes, sigma, means, latent, label_dim=label_dim,
                                        trainable_means=trainable_means, min_separation=min_separation)

    @property
    def logdet_mode(self) -> str:
        """``"exact"`` or ``"estimator"``: how :meth:`log_prob` computes the log-determinant."""
        return next(b for b in self.flow.blocks if isinstance(b, InvertibleResBlock)).logdet_mode

    def loss(
        self,
        graph: GraphLike,
        x: Tensor,
        y: Tensor,
        classification_weight: float = 0.1,
        transport_weight: float = 1.0,
    ) -> dict[str, Tensor]:
        r"""Training objective :math:`L_g + \mu L_c + \gamma W` averaged over the batch ``x`` ``(N, V, d)``, ``y`` ``(N, V)``.

        Returns a dict with ``loss`` and its terms: ``nll`` (negative log-likelihood per
        sample), ``ce`` (cross-entropy of the latent posterior, per node), ``transport``
        (summed over blocks) and ``barrier`` (trainable means only). For real-valued targets
        ``(N, V[, q])`` there are no classes to cross-entropy nor means to keep apart: the
        objective is :math:`L_g + \gamma W`, without ``ce`` and ``barrier``, and
        ``classification_weight`` is unused.
        """
        x, y = self.as_features(x), self.as_labels(y)
        graph = self.check_features(graph, x)
        self.check_labels(x, y)
        h, logdet, transport = self._encode(graph, x, True)
        nll = -(self.latent.log_prob(h, y) + logdet).mean()
        transport = transport.mean()
        if self.continuous:
            return dict(loss=nll + transport_weight * transport, nll=nll, transport=transport)
        log_post = self.latent.log_posterior(h)
        ce = nn.functional.nll_loss(log_post.reshape(-1, self.num_classes), y.reshape(-1))
        barrier = self.latent.barrier_penalty()
        loss = nll + classification_weight * ce + transport_weight * transport + barrier
        return dict(loss=loss, nll=nll, ce=ce, transport=transport, barrier=barrier)
