"""What every model of dgl_iflow shares: a flow from features to a latent, and a latent law."""
from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..inputs import as_features, as_labels
from ..graphs import Graph, GraphLike, as_graph, graph_from_edges
from ..checkpoints import atomic_save, read_checkpoint
from ..transforms import GraphFlow, InversionError, InversionWarning
from ..transforms.base import check_finite
from ..latents import LAWS, LatentLaw
from ..latents.gaussian import central_interval
from ..layers import CONVS as LAYER_CONVS
from .readout import LatentReadout
from .layout import single_node_graph, to_nodes_first, to_samples_first

#: The first layer of every block: a convolution of :data:`~dgl_iflow.layers.CONVS` (``"l3"``,
#: ``"cheb"``, ``"node"``: no message passing) or ``"mlp"`` (graph-free: the ``V d`` features
#: of a sample form one vector on one node).
CONVS = (*LAYER_CONVS, "mlp")


def _plain(value: Any) -> Any:
    """``value`` as a checkpoint keeps it: tensors and arrays as (nested) lists, tuples as lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _recording_config(init: Any) -> Any:
    """``init`` that then sets ``self.config`` to its arguments but the graph, by name, as
    :func:`_plain` values; a subclass's constructor, run last, records its own arguments."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: FlowModel, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.config = {name: _plain(value) for name, value in list(bound.arguments.items())[2:]}

    return __init__


class FlowModel(nn.Module):
    r"""A normalizing flow of node features given node labels, on one graph.

    An invertible :class:`~dgl_iflow.transforms.GraphFlow` :math:`F` maps node features
    :math:`X \in \mathbb{R}^{V \times d}` to a latent :math:`H = F(X)` of the same shape, and

    .. math::
        \log p(X \mid Y) = \log q(F(X) \mid Y) + \log|\det J_F(X)|,

    with :math:`q` a latent law given the labels (:class:`~dgl_iflow.latents.LatentLaw`), or
    :math:`N(0, I)` for an unconditional model (``latent`` is ``None``). Generation inverts
    :math:`F`; prediction is Bayes' rule in the latent. Subclasses build ``flow`` and ``latent``
    and train them; everything else lives here.

    Every public method takes the graph first and **sample-first** tensors, as the data sets
    give them: features ``(N, V, d)``, labels ``(N, V)``, per-sample values ``(N,)``. Inputs are
    checked once per call. The transforms run node-first, ``(V, N, d)`` like ``graph.ndata``
    (or ``(1, N, V d)`` on one node for a graph-free model); :meth:`to_flow` and
    :meth:`from_flow` are the only conversion.

    Attributes
    ----------
    graph : GraphLike
        The graph the model was built for and is saved with, as it was given (any form of
        :mod:`dgl_iflow.graphs`). Methods run on the graph they are given, which must have as
        many nodes.
    flow : GraphFlow
        :math:`F`.
    latent : LatentLaw or None
        :math:`q(H \mid Y)`; ``None`` for :math:`N(0, I)` without labels.
    config : dict
        The constructor's arguments but the graph, by name, saved in checkpoints: recorded by
        every subclass's constructor as it was called (defaults filled in), never by hand.
    """

    #: Written into and required from checkpoints.
    checkpoint_format: ClassVar[str]
    #: Default relative residual every unit's inverse must reach in :meth:`generate`.
    inverse_tol: ClassVar[float]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_config(cls.__init__)

    def __init__(self, graph: GraphLike, feats: int, conv: str) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
        self.graph = graph
        self.num_nodes = as_graph(graph).num_nodes()
        self.feats = feats
        self.flatten = conv == "mlp"
        #: The convolution of :func:`~dgl_iflow.layers.make_conv` the blocks are built from.
        self.conv_kind = "node" if self.flatten else conv
        self._single_node_graph = single_node_graph() if self.flatten else None
        self.flow = GraphFlow()
        self.latent: LatentLaw | None = None
        #: The discriminative head :meth:`predict_proba` uses once :meth:`fit_readout` has fitted it.
        self.readout = LatentReadout()
        self.config: dict[str, Any] = {}
        # Follows .to() and .double(), so new blocks and drawn latents match the model.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def build_latent(
        self, num_classes: int | None, sigma: float, means: Tensor | Sequence[Sequence[float]] | None,
        law: str = "node_gaussian", *, label_dim: int | None = None, trainable_means: bool = False,
        min_separation: float | None = None,
    ) -> LatentLaw | None:
        """The law ``law`` of :data:`~dgl_iflow.latents.LAWS` on this model's nodes and features.

        A law of classes takes ``num_classes`` (``None``: no law, the unconditional
        :math:`N(0, I)`), ``means``, ``trainable_means`` and ``min_separation``; a law of
        real-valued targets takes ``label_dim`` (targets ``(N, V, q)``; ``None``: ``(N, V)``),
        and ``trainable_means`` learns its map :math:`A y + b`.
        """
        if law not in LAWS:
            raise ValueError(f"latent must be one of {tuple(LAWS)}, got {law!r}")
        if not LAWS[law].discrete:
            if num_classes is not None or means is not None or min_separation is not None:
                raise ValueError(f"latent={law!r} takes real-valued targets, not classes: leave num_classes, means "
                                 "and min_separation at None (label_dim sets the targets per node)")
            return LAWS[law](self.feats, self.num_nodes, label_dim=label_dim, sigma=sigma, trainable=trainable_means)
        if label_dim is not None:
            raise ValueError(f"label_dim is the size of real-valued targets; latent={law!r} takes classes")
        if num_classes is None:
            return None
        means = None if means is None else torch.as_tensor(means, dtype=torch.get_default_dtype())
        return LAWS[law](num_classes, self.feats, sigma=sigma, means=means, num_nodes=self.num_nodes,
                         trainable_means=trainable_means, min_separation=min_separation)

    @property
    def num_classes(self) -> int | None:
        return None if self.latent is None else self.latent.num_classes

    @property
    def continuous(self) -> bool:
        """Whether the labels are real-valued targets (a law that is not :attr:`~dgl_iflow.latents.LatentLaw.discrete`)."""
        return self.latent is not None and not self.latent.discrete

    @property
    def label_shape(self) -> tuple[int, ...]:
        """A node's label shape: ``(q,)`` for targets of ``label_dim`` ``q``, else ``()``."""
        return () if self.latent is None or self.latent.label_dim is None else (self.latent.label_dim,)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def flow_feats(self) -> int:
        """Channels the transforms see: ``d``, or ``V d`` for a graph-free model."""
        return self.num_nodes * self.feats if self.flatten else self.feats

    # -- inputs, checks and layout --------------------------------------------

    def as_features(self, x: Any, name: str = "x") -> Tensor:
        """Features as users hold them (a tensor of any float dtype, a NumPy array, nested lists)
        in the model's dtype and on its device; ``TypeError`` in one line for anything else."""
        return as_features(x, self.dtype, self.device, name)

    def as_labels(self, y: Any, name: str = "y") -> Tensor | None:
        """Labels as users hold them (tensors, arrays, lists) on the model's device: class labels
        (integers of any width, whole-number floats) as int64, real-valued targets in the model's
        dtype; ``None`` stays ``None``."""
        if y is None:
            return None
        return as_features(y, self.dtype, self.device, name) if self.continuous else as_labels(y, self.device, name)

    def check_graph(self, graph: GraphLike) -> Graph:
        """``graph`` as a :class:`~dgl_iflow.graphs.Graph`; ``ValueError`` unless it has the model's number of nodes."""
        graph = as_graph(graph)
        if graph.num_nodes() != self.num_nodes:
            raise ValueError(
                f"this {type(self).__name__} was built for a graph of {self.num_nodes} nodes, "
                f"got one of {graph.num_nodes()}"
            )
        return graph

    def check_features(self, graph: GraphLike, x: Tensor, name: str = "x") -> Graph:
        """``graph`` as a :class:`~dgl_iflow.graphs.Graph`; ``ValueError`` unless ``x`` is a finite,
        non-empty ``(N, V, d)`` batch on it."""
        graph = self.check_graph(graph)
        if x.dim() != 3 or x.shape[1:] != (self.num_nodes, self.feats):
            raise ValueError(
                f"{name} must have shape (N, V, d) = (N, {self.num_nodes}, {self.feats}), got {tuple(x.shape)}"
            )
        if len(x) == 0:
            raise ValueError(f"{name} is an empty batch: shape {tuple(x.shape)}")
        check_finite(x, name)
        return graph

    def check_labels(self, x: Tensor, y: Tensor | None, name: str = "labels") -> None:
        """Raise ``ValueError`` unless ``y`` holds the ``(N, V)`` labels of ``x`` (``(N, V, q)``
        targets with ``label_dim``; finite for real-valued ones; ``None`` without a law)."""
        if (y is None) != (self.latent is None):
            raise ValueError(f"labels are needed by a conditional {type(self).__name__} and refused by an "
                             "unconditional one")
        if y is None:
            return
        expected = (*x.shape[:-1], *self.label_shape)
        if y.shape != expected:
            layout = "(N, V, q)" if self.label_shape else "(N, V)"
            raise ValueError(f"{name} must have shape {layout} = {expected}, got {tuple(y.shape)}")
        if self.continuous:
            check_finite(y, name)

    def to_flow(self, graph: Graph, x: Tensor) -> tuple[Graph, Tensor]:
        """The graph and layout the transforms run on: ``(V, N, d)``, or ``(1, N, V d)`` on one node."""
        if self.flatten:
            return self._single_node_graph, to_nodes_first(x, flatten=True)
        return graph, to_nodes_first(x)

    def from_flow(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`to_flow`'s layout: back to ``(N, V, d)``."""
        return to_samples_first(z, self.num_nodes, self.flatten)

    # -- densities -----------------------------------------------------------

    def _encode(self, graph: Graph, x: Tensor, logdet: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        flow_graph, z = self.to_flow(graph, x)
        z, total, transport = self.flow.forward_with_transport(flow_graph, z, logdet)
        return self.from_flow(z), total, transport

    def encode(self, graph: GraphLike, x: Tensor, logdet: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        """Latent :math:`H = F(X)` ``(N, V, d)``, log-det ``(N,)`` (``None`` unless ``logdet``) and transport cost ``(N,)``.

        The transport cost is :math:`\\sum_l \\|X_l - X_{l-1}\\|^2` over the blocks that count it.
        """
        x = self.as_features(x)
        graph = self.check_features(graph, x)
        return self._encode(graph, x, logdet)

    def potential(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        r""":math:`-\log q(H \mid Y)` per sample, ``(N,)``, for latents ``(N, V, d)``."""
        if self.latent is not None:
            return -self.latent.log_prob(h, y)
        return 0.5 * h.pow(2).sum(dim=(-2, -1)) + 0.5 * h.shape[-2] * h.shape[-1] * math.log(2 * math.pi)

    def latent_mean(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean of the latent law of ``h`` (``(N, V, d)``) given ``y`` (the law's ``centers``), or zeros."""
        if self.latent is None:
            return torch.zeros_like(h)
        return self.latent.centers(y).expand_as(h)

    def log_prob(self, graph: GraphLike, x: Tensor, y: Tensor | None = None) -> Tensor:
        """:math:`\\log p(X \\mid Y)` (or :math:`\\log p(X)` without classes) per sample, ``(N,)``.

        Exact, or an unbiased estimate where the flow estimates its log-determinant.
        """
        x, y = self.as_features(x), self.as_labels(y)
        graph = self.check_features(graph, x)
        self.check_labels(x, y)
        h, logdet, _ = self._encode(graph, x, True)
        return -self.potential(h, y) + logdet

    @torch.no_grad()
    def predict_proba(self, graph: GraphLike, x: Tensor) -> Tensor:
        """:math:`P(Y_v = k \\mid X)` for every node, ``(N, V, K)``: the fitted :attr:`readout`
        (:meth:`fit_readout`), else Bayes' rule in the latent (:meth:`NodeGaussianLatent.posterior`)."""
        self._class_latent("predict_proba")
        x = self.as_features(x)
        return self.proba_of_latents(x, self.encode(graph, x, logdet=False)[0])

    def proba_of_latents(self, x: Tensor, h: Tensor) -> Tensor:
        """:meth:`predict_proba` for features ``x`` ``(N, V, d)`` whose latents ``h = F(x)`` are already at hand."""
        return self.readout(x, h) if self.readout.fitted else self._class_latent("predict_proba").posterior(h)

    @torch.no_grad()
    def fit_readout(self, graph: GraphLike, x: Tensor, y: Tensor, l2: float | None = None) -> None:
        """Fit the discriminative head :attr:`readout` (:class:`~dgl_iflow.models.readout.LatentReadout`)
        to training rows ``x`` ``(N, V, d)`` and their labels: per-node logistic regression on the
        features and the latent for classes ``(N, V)`` (``l2`` as in
        :class:`~dgl_iflow.baselines.NodeLogistic`), ridge regression for real-valued targets
        (its penalty chosen by leave-one-out error; ``l2`` must stay ``None``). Densities and samples do not
        change; :meth:`predict_proba`, :meth:`predict` and :meth:`predict_interval` then use it.
        Refit after any further training (:func:`~dgl_iflow.training.fit` clears it)."""
        latent = self._conditional_latent()
        h, y = self._labelled_latents(graph, x, y)
        x = self.as_features(x)
        if latent.discrete:
            self.readout.fit(x, h, y, latent.num_classes, l2=l2)
        elif l2 is not None:
            raise ValueError("l2 sets the logistic readout's penalty for classes; the ridge readout of real-valued "
                             "targets chooses its own by leave-one-out error: leave l2=None")
        else:
            self.readout.fit_targets(x, h, y.reshape(*y.shape[:2], -1))

    @torch.no_grad()
    def predict(self, graph: GraphLike, x: Tensor) -> Tensor:
        """:math:`E[Y_v \\mid X]` for every node of a model of real-valued targets, ``(N, V)`` or
        ``(N, V, q)``: the mean of :meth:`predict_distribution`."""
        return self.predict_distribution(graph, x)[0]

    @torch.no_grad()
    def predict_distribution(self, graph: GraphLike, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every target coordinate's prediction and its standard deviation given ``x``, each ``(N, V)``
        or ``(N, V, q)``, from one pass of the flow: the fitted :attr:`readout` (:meth:`fit_readout`)
        and its leave-one-out residual scale of the node, else the law's posterior mean and standard
        deviation (:meth:`~dgl_iflow.latents.LinearGaussianLatent.posterior_mean_and_std`).
        :meth:`predict` and :meth:`predict_interval` read it."""
        latent = self._target_latent("predict_distribution")
        x = self.as_features(x)
        h = self.encode(graph, x, logdet=False)[0]
        if self.readout.fitted:
            mean = self.readout(x, h)
            std = self.readout.scale.to(mean.device, mean.dtype).expand_as(mean)
        else:
            mean, std = latent.posterior_mean_and_std(h)
        shape = (*h.shape[:2], *self.label_shape)
        return mean.reshape(shape), std.reshape(shape)

    @torch.no_grad()
    def predict_interval(
        self, graph: GraphLike, x: Tensor, level: float = 0.9, calibration: tuple[Any, Any] | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Intervals ``(lower, upper)``, each ``(N, V)`` or ``(N, V, q)``, for every target coordinate given ``x``.

        Without ``calibration``, the model's own: the prediction plus or minus
        :math:`\Phi^{-1}((1 + \text{level}) / 2)` standard deviations of
        :meth:`predict_distribution` (the readout's leave-one-out residual scale, or the
        posterior's). They hold ``level`` as far as the model's errors are Gaussian of that scale.

        ``calibration=(x_cal, y_cal)``, held-out rows ``(n, V, d)`` and their targets, makes them
        split conformal per node: the own intervals scaled about their centres by the conformal
        quantile of the calibration rows' :func:`~dgl_iflow.conformal.interval_scores`, so they hold
        at least ``level`` of new rows exchangeable with the calibration ones. A node needs
        :math:`\lceil (n + 1)\,\text{level} \rceil \le n` calibration rows, else its intervals
        are the whole real line.
        """
        from ..conformal import conformal_quantile, interval_scores, scale_intervals

        own = central_interval(*self.predict_distribution(graph, x), level)
        if calibration is None:
            return own
        x_cal, y_cal = calibration
        x_cal, y_cal = self.as_features(x_cal, "x_cal"), self.as_labels(y_cal, "y_cal")
        self.check_features(graph, x_cal, "x_cal")
        self.check_labels(x_cal, y_cal, "y_cal")
        on_calibration = central_interval(*self.predict_distribution(graph, x_cal), level)
        return scale_intervals(*own, conformal_quantile(interval_scores(y_cal, *on_calibration), level))

    def _conditional_latent(self) -> LatentLaw:
        if self.latent is None:
            raise ValueError(f"an unconditional {type(self).__name__} has no labels to predict or condition on")
        return self.latent

    def _class_latent(self, method: str) -> LatentLaw:
        """The law, for ``method`` that needs classes; one line naming the alternative otherwise."""
        latent = self._conditional_latent()
        if not latent.discrete:
            raise ValueError(f"{method} is for class labels; this {type(self).__name__} has real-valued "
                             "targets: use predict or predict_interval")
        return latent

    def _target_latent(self, method: str) -> LatentLaw:
        """The law, for ``method`` that needs real-valued targets; one line naming the alternative otherwise."""
        if self.latent is None or self.latent.discrete:
            raise ValueError(f"{method} is for real-valued targets; this {type(self).__name__} "
                             f"{'has class labels: use predict_proba' if self.latent else 'is unconditional'}")
        return self.latent

    # -- generation ----------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, graph: GraphLike, h: Tensor, tol: float | None = None, max_iter: int = 1000,
        on_failure: str = "raise",
    ) -> Tensor:
        """:math:`F^{-1}(H)` for latents ``h`` ``(N, V, d)``, every unit's inverse to ``tol``
        (default :attr:`inverse_tol`) by :class:`~dgl_iflow.transforms.GraphTransform`'s failure policy."""
        h = self.as_features(h, "h")
        graph = self.check_features(graph, h, "h")
        flow_graph, z = self.to_flow(graph, h)
        tol = self.inverse_tol if tol is None else tol
        x, _ = self.flow.inverse(flow_graph, z, tol=tol, max_iter=max_iter, on_failure=on_failure)
        return self.from_flow(x)

    @torch.no_grad()
    def sample(
        self, graph: GraphLike, y: Tensor | None = None, n: int = 1, generator: torch.Generator | None = None,
        tol: float | None = None, max_iter: int = 1000,
    ) -> Tensor:
        """``n`` samples ``(n, V, d)`` of :math:`X \\mid Y = y` for one label vector ``y`` ``(V,)``
        (real-valued targets: ``(V,)``, or ``(V, q)`` with ``label_dim``; any real values).

        Unconditional models take ``y=None`` and sample :math:`F^{-1}(Z)`, :math:`Z \\sim N(0, I)`.
        Raises :class:`~dgl_iflow.transforms.InversionError` if an inverse misses ``tol``.
        """
        graph, y = self.check_graph(graph), self.as_labels(y)
        if self.latent is None:
            if y is not None:
                raise ValueError(f"an unconditional {type(self).__name__} samples without labels: pass y=None")
            # Drawn nodes first, the order of earlier releases, so seeded samples are unchanged.
            h = torch.randn(self.num_nodes, n, self.feats, generator=generator, dtype=self.dtype,
                            device=self.device).transpose(0, 1)
        else:
            expected = (self.num_nodes, *self.label_shape)
            if y is None or y.shape != expected:
                raise ValueError(f"y must be one label vector of shape {expected}, got "
                                 f"{None if y is None else tuple(y.shape)}")
            if self.continuous:
                check_finite(y, "y")
            h = self.latent.sample(y, n, generator=generator)
        return self.generate(graph, h, tol=tol, max_iter=max_iter)

    @torch.no_grad()
    def round_trip_error(
        self, graph: GraphLike, x: Tensor, relative: bool = False, max_iter: int = 1000,
    ) -> Tensor:
        """Error of :math:`F^{-1}(F(X))` per sample, ``(N,)``: its largest absolute entry, or with
        ``relative`` :math:`\\|F^{-1}(F(X)) - X\\| / \\|X\\|`; ``inf`` where an inverse diverges.

        Every unit's inverse may use ``max_iter`` iterations; one that misses its tolerance is
        measured as it stands rather than raising.
        """
        x = self.as_features(x)
        h, _, _ = self.encode(graph, x, logdet=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InversionWarning)  # the error is what is asked for
            try:
                error = self.generate(graph, h, max_iter=max_iter, on_failure="warn") - x
            except InversionError:  # an iterate diverged
                return torch.full(x.shape[:1], math.inf, dtype=x.dtype, device=x.device)
        if relative:
            scale = x.pow(2).sum(dim=(-2, -1)).sqrt().clamp_min(torch.finfo(x.dtype).tiny)
            return (error.pow(2).sum(dim=(-2, -1)).sqrt() / scale).nan_to_num(nan=math.inf)
        return error.abs().amax(dim=(-2, -1)).nan_to_num(nan=math.inf)

    @torch.no_grad()
    def uncertainty_set(
        self, graph: GraphLike, y: Tensor, level: float = 0.9, num_points: int = 200,
        generator: torch.Generator | None = None, max_iter: int = 1000, radius: float | None = None,
    ) -> Tensor:
        r"""Whole samples ``(num_points, V, d)`` on the boundary of the set holding ``level`` of :math:`X \mid Y = y`.

        The set is :math:`F^{-1}` of the latent ellipsoid :math:`\{h : \lVert L^{-1}(h - c) \rVert
        \le \sqrt{\chi^2_{V d}{}^{-1}(\text{level})}\}` over all :math:`V d` coordinates
        (:meth:`~dgl_iflow.latents.NodeGaussianLatent.confidence_region`): the latent given ``y`` is Gaussian, so the
        ellipsoid holds exactly ``level`` of its mass, and the flow, a bijection, carries that to
        exactly ``level`` of the model's samples. ``radius`` replaces that bound on the
        :meth:`whitened_distance`: a conformally calibrated one
        (:class:`~dgl_iflow.conformal.SplitConformal` on the ``"distance"`` score) draws the set
        that holds ``level`` of new data. Boundary directions are evenly spaced when
        :math:`V d = 2`, uniform on the sphere otherwise. Per-node sets:
        :meth:`node_uncertainty_sets`.
        """
        latent = self._class_latent("uncertainty_set")
        centers, scales = latent.confidence_region(self.as_labels(y), level)
        if radius is not None:
            if not (radius > 0.0 and math.isfinite(radius)):
                raise ValueError(f"radius must be positive and finite, got {radius}")
            scales = scales * (radius / latent.confidence_radius(level, centers.shape[-2]))
        size = scales.shape[-1]
        if size == 2:
            angle = torch.linspace(0, 2 * math.pi, num_points, dtype=centers.dtype, device=centers.device)
            direction = torch.stack([angle.cos(), angle.sin()], -1)
        else:
            direction = torch.randn(num_points, size, generator=generator, dtype=centers.dtype, device=centers.device)
            direction = direction / direction.norm(dim=-1, keepdim=True)
        offsets = (scales @ direction.unsqueeze(-1)).squeeze(-1).unflatten(-1, centers.shape[-2:])
        return self.generate(graph, centers + offsets, max_iter=max_iter)

    @torch.no_grad()
    def in_uncertainty_set(self, graph: GraphLike, x: Tensor, y: Tensor, level: float = 0.9) -> Tensor:
        """Whether each whole sample lies in its ``level`` set (:meth:`uncertainty_set`), bool ``(N,)``."""
        return self._class_latent("in_uncertainty_set").contains(*self._labelled_latents(graph, x, y), level)

    @torch.no_grad()
    def whitened_distance(self, graph: GraphLike, x: Tensor, y: Tensor) -> Tensor:
        """How far each whole sample's latent lies from its law given ``y``, ``(N,)``
        (:meth:`NodeGaussianLatent.whitened_distance`); :meth:`in_uncertainty_set` bounds it."""
        return self._class_latent("whitened_distance").whitened_distance(*self._labelled_latents(graph, x, y))

    @torch.no_grad()
    def node_whitened_distance(self, graph: GraphLike, x: Tensor, y: Tensor) -> Tensor:
        """How far each node's latent lies from its node's law given ``y``, ``(N, V)``
        (:meth:`NodeGaussianLatent.node_whitened_distance`); :meth:`in_node_uncertainty_sets` bounds it."""
        return self._class_latent("node_whitened_distance").node_whitened_distance(*self._labelled_latents(graph, x, y))

    def _labelled_latents(self, graph: GraphLike, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        """``F(x)`` and ``y``, both as users hold them, converted and checked: ``(N, V, d)``, ``(N, V)``."""
        x, y = self.as_features(x), self.as_labels(y)
        graph = self.check_features(graph, x)
        self.check_labels(x, y)
        return self._encode(graph, x, False)[0], y

    @torch.no_grad()
    def node_uncertainty_sets(
        self, graph: GraphLike, y: Tensor, level: float = 0.9, num_points: int = 200,
        generator: torch.Generator | None = None, max_iter: int = 1000,
    ) -> Tensor:
        r"""Points ``(num_points, V, d)`` with every node on the boundary of its own ``level`` set.

        Node :math:`v`'s set holds ``level`` of node :math:`v`'s latent mass
        (:meth:`~dgl_iflow.latents.NodeGaussianLatent.node_confidence_regions`: the ball
        :math:`\|H_v - \mu_{y_v}\| \le r` under the node law), so a whole sample lies in all
        ``V`` of them less often than ``level``: use :meth:`uncertainty_set` for that. Directions
        are evenly spaced for :math:`d = 2`, uniform otherwise; for plotting each node's set.
        """
        latent = self._class_latent("node_uncertainty_sets")
        centers, scales = latent.node_confidence_regions(self.as_labels(y), level)
        if self.feats == 2:
            angle = torch.linspace(0, 2 * math.pi, num_points, dtype=centers.dtype, device=centers.device)
            direction = torch.stack([angle.cos(), angle.sin()], -1).unsqueeze(1).expand(-1, self.num_nodes, -1)
        else:
            # Drawn nodes first, the order of earlier releases, so seeded sets are unchanged.
            direction = torch.randn(self.num_nodes, num_points, self.feats, generator=generator,
                                    dtype=centers.dtype, device=centers.device).transpose(0, 1)
            direction = direction / direction.norm(dim=-1, keepdim=True)
        return self.generate(graph, centers + (scales @ direction.unsqueeze(-1)).squeeze(-1), max_iter=max_iter)

    @torch.no_grad()
    def in_node_uncertainty_sets(self, graph: GraphLike, x: Tensor, y: Tensor, level: float = 0.9) -> Tensor:
        """Whether each node of each sample lies in its node's ``level`` set (:meth:`node_uncertainty_sets`), bool ``(N, V)``."""
        return self._class_latent("in_node_uncertainty_sets").node_contains(*self._labelled_latents(graph, x, y), level)

    # -- checkpoints ---------------------------------------------------------

    def checkpoint_structure(self) -> dict[str, Any]:
        """What the constructor alone does not rebuild (a JKO flow's blocks); saved in checkpoints."""
        return {}

    def restore_structure(self, structure: dict[str, Any]) -> None:
        """Rebuild what :meth:`checkpoint_structure` describes, before the weights are loaded."""

    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`from_checkpoint` needs: format, configuration, dtype, graph, structure and weights."""
        graph = as_graph(self.graph)
        src, dst = graph.edges()
        saved_graph = dict(num_nodes=self.num_nodes, src=src.cpu(), dst=dst.cpu())
        if graph.edge_weight is not None:
            saved_graph["edge_weight"] = graph.edge_weight.detach().cpu()
        if graph.batch_size > 1:
            saved_graph["batch_num_nodes"] = graph.batch_num_nodes()
        return dict(
            format=self.checkpoint_format, config=self.config, dtype=str(self.dtype).removeprefix("torch."),
            graph=saved_graph,
            structure=self.checkpoint_structure(), state_dict=self.state_dict(),
        )

    def save(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write :meth:`checkpoint` plus ``extra`` entries to ``path`` atomically."""
        atomic_save({**self.checkpoint(), **extra}, path)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], graph: GraphLike | None = None) -> FlowModel:
        """Rebuild the model saved in ``checkpoint`` (on its own graph unless one is given), in the saved dtype."""
        if not hasattr(cls, "checkpoint_format"):
            raise TypeError("FlowModel is the base class: load a concrete model, IGNN.load or JKOFlow.load")
        if checkpoint.get("format") != cls.checkpoint_format:
            raise ValueError(f"not a {cls.__name__} checkpoint: format {checkpoint.get('format')!r}, "
                             f"expected {cls.checkpoint_format!r}")
        saved = checkpoint["graph"]
        if graph is None:
            graph = graph_from_edges(saved["src"], saved["dst"], saved["num_nodes"], saved.get("edge_weight"),
                                     saved.get("batch_num_nodes"))
        elif (graph_nodes := as_graph(graph).num_nodes()) != saved["num_nodes"]:
            raise ValueError(f"the checkpoint's model was built for a graph of {saved['num_nodes']} nodes, "
                             f"got one of {graph_nodes}")
        # Building draws initial weights that the saved ones replace: the caller's stream stays put.
        with torch.random.fork_rng():
            model = cls(graph, **checkpoint["config"])
            model.restore_structure(checkpoint.get("structure", {}))
        # A float64 model loads as float64, not rounded through the default dtype.
        model.to(getattr(torch, checkpoint.get("dtype", "float32")))
        model.load_state_dict(checkpoint["state_dict"])
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, graph: GraphLike | None = None) -> FlowModel:
        """Read a model written by :meth:`save`, without running code from the file.

        Raises :class:`~dgl_iflow.checkpoints.CheckpointError` for a file that is unreadable,
        carries anything beyond tensors and plain containers, or needs converting.
        """
        return cls.from_checkpoint(read_checkpoint(path), graph)

    @classmethod
    def _config_defaults(cls) -> dict[str, Any]:
        """The constructor's default arguments, as :attr:`config` records them."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return {p.name: _plain(p.default) for p in parameters if p.default is not inspect.Parameter.empty}

    def load_weights(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load the structure and weights saved by :meth:`save` into this model; the configurations must match.

        Returns the whole checkpoint, so callers can read their ``extra`` entries.
        """
        checkpoint = read_checkpoint(path)
        if checkpoint.get("format") != self.checkpoint_format:
            raise ValueError(f"checkpoint {path} holds format {checkpoint.get('format')!r}, not this model's "
                             f"{self.checkpoint_format!r}")
        # Arguments added since the checkpoint was written were then at their defaults.
        saved = {**self._config_defaults(), **checkpoint.get("config", {})}
        if saved != self.config:
            differences = {key: (saved.get(key), self.config.get(key)) for key in sorted({*saved, *self.config})
                           if saved.get(key) != self.config.get(key)}
            raise ValueError(f"checkpoint {path} was written by another configuration; (saved, this model) "
                             f"differ in {differences}")
        with torch.random.fork_rng():  # fresh blocks draw weights that the saved ones replace
            self.restore_structure(checkpoint.get("structure", {}))
        self.load_state_dict(checkpoint["state_dict"])
        return checkpoint
