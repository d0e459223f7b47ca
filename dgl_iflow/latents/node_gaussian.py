r"""The node-factorized class-conditional Gaussian law: :math:`H_v \mid Y_v = k \sim N(\mu_k, \sigma^2 I_d)`.

The paper's law. Its subclass :class:`~dgl_iflow.latents.LabelContextLatent` moves every
node's mean with the whole label vector; after training either can replace the law of every
training label vector by a joint Gaussian (:mod:`~dgl_iflow.latents.label_vector_gaussians`).
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .base import LatentLaw
from .gaussian import chi_quantile, default_separation, gaussian_log_prob, spread_means
from .label_vector_gaussians import MAX_JOINT_DIM, fit_joint_gaussians

__all__ = ["NodeGaussianLatent"]


class NodeGaussianLatent(LatentLaw):
    r"""Independent class-conditional Gaussians on the nodes of a graph.

    .. math::

        \log p(H \mid Y) = \sum_v \log \mathcal{N}(H_v;\ \mu_{Y_v}, \sigma^2 I_d)

    Subclasses may move the centers with the whole label vector (:meth:`node_law_centers`,
    :class:`~dgl_iflow.latents.LabelContextLatent`); everything else follows from the centers.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``.
    dim : int
        Latent dimension ``d`` per node.
    sigma : float
        Standard deviation of every latent coordinate.
    means : Tensor, optional
        ``(K, d)`` class means.  Placed by :func:`spread_means` if omitted.
    trainable_means : bool
        Register the means as a parameter; see :meth:`barrier_penalty`.
    min_separation : float, optional
        Required pairwise distance ``c`` between means.  Defaults to
        :func:`default_separation` for ``K`` classes and ``num_nodes`` nodes
        with ``delta = 0.01``.  Given ``means`` that violate an explicit
        ``min_separation`` raise ``ValueError``: silently accepting them would
        void the guarantee the caller asked for.
    num_nodes : int
        Number of nodes the default separation must cover.
    priors : Tensor, optional
        ``(K,)`` positive class probabilities (normalised here); uniform if
        omitted.

    After training, :meth:`fit_label_vector_gaussians` can replace the law of every training
    label vector ``Y`` by one Gaussian over all ``V d`` latent coordinates,
    :math:`H \mid Y \sim N(\mu_Y, \Sigma_Y)`, fitted to the trained flow's latents of the
    training rows (:meth:`fit_after_training`); densities, samples, posteriors and confidence
    regions then use it for those label vectors and the node law above for every other.

    Attributes
    ----------
    means : Tensor
        ``(K, d)`` buffer, or parameter when ``trainable_means``.
    log_priors : Tensor
        ``(K,)`` buffer of log class probabilities.
    separation : float
        The ``c`` used for automatic placement and the barrier.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        sigma: float = 1.0,
        means: Tensor | None = None,
        trainable_means: bool = False,
        min_separation: float | None = None,
        num_nodes: int = 1,
        priors: Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes} and {dim}")
        if not (sigma > 0.0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be positive and finite, got {sigma}")
        if min_separation is not None and min_separation < 0.0:
            raise ValueError(f"min_separation must be non-negative, got {min_separation}")
        self.num_classes = num_classes
        self.dim = dim
        self.sigma = float(sigma)
        self.num_nodes = num_nodes
        self.trainable_means = trainable_means
        self.separation = (
            float(min_separation)
            if min_separation is not None
            else default_separation(num_classes, num_nodes, sigma)
        )

        if means is None:
            init = spread_means(num_classes, dim, self.separation)
        else:
            init = torch.as_tensor(means, dtype=torch.get_default_dtype()).clone()
            if init.shape != (num_classes, dim):
                raise ValueError(
                    f"means must have shape (num_classes, dim) = ({num_classes}, {dim}), "
                    f"got {tuple(init.shape)}"
                )
            if not torch.isfinite(init).all():
                raise ValueError("means contain NaN or inf")
            if min_separation is not None and num_classes > 1:
                closest = torch.pdist(init.double()).min().item()
                if closest < min_separation:
                    raise ValueError(
                        f"given means are only {closest:.6g} apart, "
                        f"below min_separation={min_separation:.6g}"
                    )
        if trainable_means:
            self.means = nn.Parameter(init)
        else:
            self.register_buffer("means", init)

        if priors is None:
            log_priors = torch.full((num_classes,), -math.log(num_classes))
        else:
            p = torch.as_tensor(priors, dtype=torch.get_default_dtype())
            if p.shape != (num_classes,):
                raise ValueError(
                    f"priors must have shape ({num_classes},), got {tuple(p.shape)}"
                )
            if not (torch.isfinite(p).all() and (p > 0).all()):
                raise ValueError("priors must be positive and finite")
            log_priors = (p / p.sum()).log()
        self.register_buffer("log_priors", log_priors)

        # The training set's distinct label vectors (M, V) and their log frequencies (M,):
        # their count depends on the data, so they travel in the extra state.
        self.label_vectors: Tensor | None = None
        self.label_log_weights: Tensor | None = None
        # The joint Gaussians of those label vectors, (M, V d) means and (M, V d, V d) Cholesky
        # factors (fit_label_vector_gaussians), and the pseudo-count they were fitted with.
        self.joint_means: Tensor | None = None
        self.joint_chols: Tensor | None = None
        self.pseudo_count: float | None = None
        self._register_load_state_dict_pre_hook(_without_label_vectors, with_module=True)

    fits_after_training = True

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, sigma={self.sigma:g}, "
            f"separation={self.separation:.4g}, trainable_means={self.trainable_means}, "
            f"label_vector_gaussians={'none' if self.pseudo_count is None else len(self.joint_means)}"
        )

    def get_extra_state(self) -> dict[str, Tensor | float]:
        state: dict[str, Tensor | float] = {}
        if self.label_vectors is not None:
            state.update(label_vectors=self.label_vectors, label_log_weights=self.label_log_weights)
        if self.pseudo_count is not None:
            state.update(joint_means=self.joint_means, joint_chols=self.joint_chols, pseudo_count=self.pseudo_count)
        return state

    def set_extra_state(self, state: dict[str, Tensor | float]) -> None:
        self.label_vectors = state.get("label_vectors")
        self.label_log_weights = state.get("label_log_weights")
        self.joint_means = state.get("joint_means")
        self.joint_chols = state.get("joint_chols")
        self.pseudo_count = state.get("pseudo_count")
        self._move_fitted()

    def _apply(self, fn, *args, **kwargs):
        # The fitted tables are plain attributes (their size depends on the data): move them too.
        super()._apply(fn, *args, **kwargs)
        self._move_fitted()
        return self

    def _move_fitted(self) -> None:
        device, dtype = self.means.device, self.means.dtype
        if self.label_vectors is not None:
            self.label_vectors = self.label_vectors.to(device)
            self.label_log_weights = self.label_log_weights.to(device, dtype)
        if self.joint_means is not None:
            self.joint_means = self.joint_means.to(device, dtype)
            self.joint_chols = self.joint_chols.to(device, dtype)

    # -- validation -------------------------------------------------------

    def _check_h(self, h: Tensor) -> None:
        if not isinstance(h, Tensor):
            raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
        if h.ndim < 2 or h.shape[-1] != self.dim:
            raise ValueError(
                f"h must have shape (*, V, d) with d={self.dim}, got {tuple(h.shape)}"
            )
        if not torch.isfinite(h).all():
            raise ValueError(f"h of shape {tuple(h.shape)} contains NaN or inf")

    def _check_y(self, y: Tensor) -> None:
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {y.dtype}")
        if y.ndim < 1:
            raise ValueError("labels must have shape (*, V), got a scalar")
        bad = (y < 0) | (y >= self.num_classes)
        if bad.any():
            values = torch.unique(y[bad]).tolist()
            raise ValueError(
                f"labels {values} are outside the valid range [0, {self.num_classes})"
            )

    def _labels_like(self, h: Tensor, y: Tensor) -> Tensor:
        """Validate ``h`` and ``y`` and broadcast ``y`` to ``h.shape[:-1]``."""
        self._check_h(h)
        self._check_y(y)
        lead = h.shape[:-1]
        if y.ndim > len(lead) or y.shape != lead[len(lead) - y.ndim:]:
            raise ValueError(
                f"labels of shape {tuple(y.shape)} do not match h of shape "
                f"{tuple(h.shape)}: expected labels shaped like a suffix of {tuple(lead)}"
            )
        return y.expand(lead)

    # -- densities --------------------------------------------------------

    def centers(self, y: Tensor) -> Tensor:
        r"""Mean of every node's latent given the labels ``y`` ``(*, V)``: ``(*, V, d)``.

        The node law's centers (:meth:`node_law_centers`); :math:`\mu_Y` for a label vector with
        a joint Gaussian (:meth:`fit_label_vector_gaussians`).
        """
        return self._centers(y, self._joint_rows(y))

    def _centers(self, y: Tensor, joint: tuple[Tensor, Tensor] | None) -> Tensor:
        """:meth:`centers` given ``joint = self._joint_rows(y)``."""
        centers = self.node_law_centers(y)
        if joint is None:
            return centers
        mask, rows = joint
        centers = centers.clone()
        centers[mask] = self.joint_means[rows].reshape(-1, *centers.shape[-2:])
        return centers

    def node_law_centers(self, y: Tensor) -> Tensor:
        """:meth:`centers` of the trained node law, ignoring any joint Gaussians: ``(*, V, d)``."""
        return self.means[y]

    def _joint_rows(self, y: Tensor) -> tuple[Tensor, Tensor] | None:
        """Which rows of ``y`` ``(*, V)`` have a label vector with a joint Gaussian (a ``(*,)``
        mask) and the index of each of those vectors (``(n,)``); ``None`` when no row has one."""
        if self.joint_means is None or y.shape[-1] != self.label_vectors.shape[1]:
            return None
        equal = (y.unsqueeze(-2) == self.label_vectors).all(dim=-1)  # (*, M)
        mask = equal.any(dim=-1)
        if not mask.any():
            return None
        return mask, equal[mask].to(torch.int8).argmax(dim=-1)

    def _log_normalizer(self) -> float:
        return -0.5 * self.dim * math.log(2.0 * math.pi * self.sigma**2)

    def node_log_prob(self, h: Tensor) -> Tensor:
        r"""Log-density of every node latent under every class.

        .. math::

            \ell_{vk} = -\frac{\lVert h_v - \mu_k \rVert^2}{2\sigma^2}
                        - \frac{d}{2}\log(2\pi\sigma^2)

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.

        Returns
        -------
        Tensor
            ``(*, V, K)``.
        """
        self._check_h(h)
        sq = (h.unsqueeze(-2) - self.means).square().sum(-1)
        return -0.5 * sq / self.sigma**2 + self._log_normalizer()

    def log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        """Joint log-density ``log p(H | Y)`` summed over nodes and features.

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.
        y : Tensor
            ``(*, V)`` labels, or a suffix of that shape.

        Returns
        -------
        Tensor
            ``(*,)``, one value per sample; a scalar when ``h`` is ``(V, d)``.
        """
        labels = self._labels_like(h, y)
        sq = (h - self.node_law_centers(labels)).square().sum(-1)
        node_law = (-0.5 * sq / self.sigma**2 + self._log_normalizer()).sum(-1)
        joint = self._joint_rows(labels)
        if joint is None:
            return node_law
        mask, rows = joint
        out = node_law.clone()
        out[mask] = gaussian_log_prob(h[mask].flatten(-2).unsqueeze(-1), self.joint_means[rows],
                                      self.joint_chols[rows]).squeeze(-1)
        return out

    def log_posterior(self, h: Tensor) -> Tensor:
        r"""Log class posterior of every node by Bayes' rule.

        .. math::

            \log P(Y_v = k \mid H_v) = \ell_{vk} + \log\pi_k
                - \log\sum_j \exp(\ell_{vj} + \log\pi_j)

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.

        Returns
        -------
        Tensor
            ``(*, V, K)``; suitable for ``nll_loss`` after moving ``K`` to dim 1.
        """
        return torch.log_softmax(self.node_log_prob(h) + self.log_priors, dim=-1)

    def posterior(self, h: Tensor) -> Tensor:
        """Class probabilities of every node, shape ``(*, V, K)``: ``P(Y_v = k | H_v)``, or with
        joint Gaussians the marginals of :meth:`label_vector_posterior`."""
        if self.joint_means is not None:
            return self.label_vector_posterior(h)
        return self.log_posterior(h).exp()

    def fit_label_vectors(self, y_train: Tensor) -> Tensor:
        """Remember the distinct label vectors of ``y_train`` ``(N, V)`` and their frequencies,
        the prior of :meth:`label_vector_posterior`, and drop any joint Gaussians
        (:meth:`fit_label_vector_gaussians`). Returns the ``(M, V)`` vectors."""
        if y_train.dim() != 2:
            raise ValueError(f"fit_label_vectors needs labels of shape (N, V), got {tuple(y_train.shape)}")
        self._check_y(y_train)
        vectors, counts = torch.unique(y_train.to(self.means.device), dim=0, return_counts=True)
        self.label_vectors = vectors
        self.label_log_weights = (counts.to(self.means.dtype) / counts.sum()).log()
        self.clear_label_vector_gaussians()
        return vectors

    def clear_label_vector_gaussians(self) -> None:
        """Go back to the node law for every label vector (:func:`~dgl_iflow.training.fit` does
        before training: joint Gaussians fitted to other weights would be stale)."""
        self.joint_means = self.joint_chols = self.pseudo_count = None

    def fit_label_vector_gaussians(
        self, h: Tensor, y: Tensor, pseudo_count: float | None = None, folds: int = 5,
        generator: torch.Generator | None = None,
    ) -> float:
        r"""Fit one Gaussian over all ``V d`` latent coordinates to each training label vector.

        For the :math:`n` rows :math:`h_i` of ``h`` whose label vector is :math:`Y`, with
        :math:`c_Y` the node law's centers (:meth:`node_law_centers`) and :math:`s` the
        pseudo-count,

        .. math::

            \mu_Y = \frac{\sum_i h_i + s\, c_Y}{n + s}, \qquad
            \Sigma_Y = \frac{\sum_i (h_i - \mu_Y)(h_i - \mu_Y)^\top + s\,\sigma^2 I}{n + s}:

        the rows' mean and scatter, shrunk towards the trained node law as if it had been
        seen :math:`s` more times. Every label vector gets a positive definite
        :math:`\Sigma_Y`, even one seen once. With the flow fixed this raises the training
        likelihood wherever the node law was wrong about a label vector's spread or
        correlations (the flow's Lipschitz blocks leave rare label vectors too wide), and
        likelihoods stay exact: the joint Gaussian is the base distribution of those label
        vectors. The prior of :meth:`label_vector_posterior` is refitted too
        (:meth:`fit_label_vectors`).

        Parameters
        ----------
        h : Tensor
            ``(N, V, d)`` latents of the training rows, :math:`F(X)` of the trained flow.
        y : Tensor
            ``(N, V)`` their labels.
        pseudo_count : float, optional
            :math:`s > 0`. By default, of the values in
            :data:`~dgl_iflow.latents.label_vector_gaussians.PSEUDO_COUNTS`, the largest whose
            held-out log-likelihood of the rows in ``folds``-fold cross-validation is within one
            standard error of the best one's (the standard error of the sum of the per-row
            differences): the most shrinkage the data cannot tell from the best. On traffic the
            cross-validated likelihood is flat between 10 and 30 while the test likelihood is
            not, and the larger one holds up better (docs/reproduce.md).
        folds : int
            Folds of that cross-validation, ``>= 2``.
        generator : torch.Generator, optional
            Draws the folds.

        Returns
        -------
        float
            The pseudo-count used, also kept as :attr:`pseudo_count`.

        Notes
        -----
        Costs :math:`O(M (V d)^2)` memory for :math:`M` distinct label vectors, so ``V d`` is
        limited to :data:`~dgl_iflow.latents.label_vector_gaussians.MAX_JOINT_DIM`.
        """
        self._check_h(h)
        if h.ndim != 3 or y.shape != h.shape[:2]:
            raise ValueError(f"expected h (N, V, d) and y (N, V), got {tuple(h.shape)} and {tuple(y.shape)}")
        dim = h.shape[1] * h.shape[2]
        if dim > MAX_JOINT_DIM:
            raise ValueError(f"joint Gaussians over V d = {dim} coordinates need {dim}^2 floats per label vector; "
                             f"they are limited to V d <= {MAX_JOINT_DIM}")
        if pseudo_count is not None and not (pseudo_count > 0.0 and math.isfinite(pseudo_count)):
            raise ValueError(f"pseudo_count must be positive and finite, got {pseudo_count}")
        if folds < 2:
            raise ValueError(f"folds must be >= 2, got {folds}")
        with torch.no_grad():
            vectors = self.fit_label_vectors(y)
            group = (y.to(vectors.device).unsqueeze(1) == vectors).all(dim=-1).to(torch.int8).argmax(dim=1)
            flat = h.detach().to(torch.float64).flatten(1)
            prior = self.node_law_centers(vectors).to(torch.float64).flatten(1)  # (M, V d)
            self.joint_means, self.joint_chols, self.pseudo_count = fit_joint_gaussians(
                flat, group, prior, self.sigma, pseudo_count, folds, generator)
        self._move_fitted()
        return self.pseudo_count

    def label_vector_posterior(self, h: Tensor) -> Tensor:
        r"""Node marginals of the posterior over whole label vectors, ``(*, V, K)``.

        .. math::

            P(Y_v = k \mid H) = \sum_{m:\, y^{(m)}_v = k} \frac{w_m\, p(H \mid y^{(m)})}
                {\sum_{m'} w_{m'}\, p(H \mid y^{(m')})}

        over the training set's label vectors :math:`y^{(m)}` with their frequencies
        :math:`w_m` (:meth:`fit_label_vectors`), under their joint Gaussians if fitted. Bayes'
        rule on the latent is Bayes' rule on :math:`X`: the flow's log-determinant does not
        depend on the labels. A label vector never seen in training gets no mass of its own,
        but its nodes still get marginals.
        """
        if self.label_vectors is None:
            raise RuntimeError("label_vector_posterior needs the training label vectors: call fit_label_vectors "
                               "(fit does, for a LabelContextLatent)")
        self._check_h(h)
        if self.joint_means is None:
            centers = self.centers(self.label_vectors)  # (M, V, d)
            sq = (h.unsqueeze(-3) - centers).square().sum(dim=(-2, -1))  # (*, M)
            log_likelihood = -0.5 * sq / self.sigma**2
        else:
            flat = h.reshape(-1, h.shape[-2] * h.shape[-1])
            log_likelihood = gaussian_log_prob(flat.T, self.joint_means, self.joint_chols)  # (M, n)
            log_likelihood = log_likelihood.T.reshape(*h.shape[:-2], -1)
        weights = torch.softmax(log_likelihood + self.label_log_weights, dim=-1)
        onehot = nn.functional.one_hot(self.label_vectors, self.num_classes).to(h.dtype)  # (M, V, K)
        return torch.einsum("...m,mvk->...vk", weights, onehot)

    def fit_priors(self, y_train: Tensor) -> Tensor:
        r"""Set the class priors from training labels with add-one smoothing.

        .. math::

            \pi_k = \frac{n_k + 1}{n + K}

        Parameters
        ----------
        y_train : Tensor
            Integer labels of any shape.

        Returns
        -------
        Tensor
            The new ``(K,)`` ``log_priors``.
        """
        self._check_y(y_train.reshape(-1))
        counts = torch.bincount(y_train.reshape(-1), minlength=self.num_classes)
        smoothed = counts.to(self.log_priors.dtype) + 1.0
        self.log_priors.copy_((smoothed / smoothed.sum()).log())
        return self.log_priors

    def fit_before_training(self, y_train: Tensor) -> None:
        """The class priors of ``y_train`` ``(N, V)`` (:meth:`fit_priors`); drops any joint Gaussians,
        which belong to the weights they were fitted to."""
        self.fit_priors(y_train.reshape(-1))
        self.clear_label_vector_gaussians()

    def fit_after_training(self, h_train: Tensor, y_train: Tensor, generator: torch.Generator | None = None) -> None:
        """A joint Gaussian per training label vector with a cross-validated pseudo-count
        (:meth:`fit_label_vector_gaussians`)."""
        self.fit_label_vector_gaussians(h_train, y_train, generator=generator)

    # -- sampling ---------------------------------------------------------

    def sample(
        self, y: Tensor, n: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Draw latents given labels.

        Under the node law :math:`c(Y) + \sigma z`; for a label vector with a joint Gaussian
        :math:`\mu_Y + L_Y z` (:math:`L_Y L_Y^\top = \Sigma_Y`), from the same standard normal
        draws :math:`z`.

        Parameters
        ----------
        y : Tensor
            ``(V,)`` labels when ``n`` is given, otherwise ``(*, V)``.
        n : int, optional
            Number of samples for the single label vector ``y``.
        generator : torch.Generator, optional
            Source of randomness, on the device of the means.

        Returns
        -------
        Tensor
            ``(n, V, d)`` when ``n`` is given, else ``(*, V, d)``.
        """
        self._check_y(y)
        if n is not None:
            if y.ndim != 1:
                raise ValueError(
                    f"sample with n needs labels of shape (V,), got {tuple(y.shape)}"
                )
            if n < 1:
                raise ValueError(f"n must be >= 1, got {n}")
            y = y.expand(n, -1)
        centers = self.node_law_centers(y)
        # Drawn nodes first, the order of earlier releases, so seeded samples are unchanged.
        noise = torch.randn(
            centers.movedim(-2, 0).shape, generator=generator, dtype=centers.dtype, device=centers.device
        ).movedim(0, -2)
        drawn = centers + self.sigma * noise
        joint = self._joint_rows(y)
        if self.joint_means is not None and (joint is None or not bool(joint[0].all())):
            warnings.warn("a label vector never seen in training has no joint Gaussian: its latents are drawn "
                          "from the per-node law instead, which ignores the correlations between nodes", stacklevel=2)
        if joint is None:
            return drawn
        mask, rows = joint
        correlated = self.joint_chols[rows] @ noise[mask].flatten(-2).unsqueeze(-1)
        drawn[mask] = (self.joint_means[rows] + correlated.squeeze(-1)).reshape(-1, *drawn.shape[-2:])
        return drawn

    # -- trainable means --------------------------------------------------

    def barrier_penalty(self, eps: float = 0.1) -> Tensor:
        r"""Log-barrier keeping trainable means at least ``separation`` apart.

        With gaps measured in units of ``sigma``,
        :math:`u_{ij} = (\lVert\mu_i - \mu_j\rVert - c)/\sigma`, the penalty is

        .. math::

            B = \sum_{i<j} b(u_{ij}), \qquad
            b(u) = \begin{cases}
                -\log u & u \ge \epsilon \\
                -\log\epsilon - (u - \epsilon)/\epsilon & u < \epsilon
            \end{cases}

        The linear extension matches value and slope at ``eps``, so ``B`` is
        finite everywhere, and a pair closer than ``c + eps * sigma`` feels
        the constant push ``1 / (eps * sigma)`` apart instead of an
        overflowing one.  Coincident means are nudged along the first axis
        so that the push has a direction.

        Parameters
        ----------
        eps : float
            Gap (in units of ``sigma``) below which the barrier is linear.

        Returns
        -------
        Tensor
            Scalar; zero (without gradient) when the means are fixed or
            ``K = 1``.
        """
        if not self.trainable_means or self.num_classes < 2:
            return torch.zeros((), dtype=self.means.dtype, device=self.means.device)
        i, j = torch.triu_indices(self.num_classes, self.num_classes, offset=1)
        diff = self.means[i] - self.means[j]
        tiny = 1e-6 * self.sigma
        # The norm has no gradient at zero; a fixed offset for (nearly)
        # coincident pairs keeps it differentiable and gives a push direction.
        nudge = torch.zeros_like(diff)
        nudge[:, 0] = tiny
        coincide = diff.detach().norm(dim=-1, keepdim=True) < 0.5 * tiny
        dist = (diff + torch.where(coincide, nudge, torch.zeros_like(diff))).norm(dim=-1)
        gap = (dist - self.separation) / self.sigma
        inside = -torch.log(gap.clamp(min=eps))
        outside = -math.log(eps) - (gap - eps) / eps
        return torch.where(gap >= eps, inside, outside).sum()

    # -- uncertainty ------------------------------------------------------

    def node_confidence_radius(self, level: float) -> float:
        r"""Radius of the ball around a class mean holding ``level`` of one node's mass.

        ``||H_v - mu_k||^2 / sigma^2`` is chi-squared with ``d`` degrees of
        freedom, so

        .. math::

            r = \sigma \sqrt{\chi^2_{d}{}^{-1}(\text{level})}.

        Parameters
        ----------
        level : float
            Coverage probability in ``(0, 1)``.

        Returns
        -------
        float
        """
        return self.sigma * chi_quantile(level, self.dim)

    def node_confidence_regions(self, y: Tensor, level: float) -> tuple[Tensor, Tensor]:
        r"""Per node, the ellipsoid holding ``level`` of that node's latent mass given the labels.

        Node :math:`v`'s region is :math:`\{c_v + S_v u : \lVert u \rVert \le 1\}` with
        :math:`S_v = \sqrt{\chi^2_d{}^{-1}(\text{level})}\, L_v` and :math:`L_v L_v^\top` the
        covariance of :math:`H_v` given ``y``: :math:`\sigma^2 I` under the node law (a ball of
        radius :meth:`node_confidence_radius`), the node's block of :math:`\Sigma_Y` under a joint
        Gaussian (:meth:`fit_label_vector_gaussians`). Each holds ``level`` of its node's mass;
        all ``V`` of them together hold less of a whole sample (:meth:`confidence_region` is
        the set for the whole sample).

        Parameters
        ----------
        y : Tensor
            ``(*, V)`` labels.
        level : float
            Coverage probability in ``(0, 1)``.

        Returns
        -------
        centers : Tensor
            ``(*, V, d)`` means of the nodes (:meth:`centers`).
        scales : Tensor
            ``(*, V, d, d)`` lower-triangular :math:`S_v`.
        """
        self._check_y(y)
        centers, chols = self._node_laws(y)
        return centers, chi_quantile(level, self.dim) * chols

    def _node_laws(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Every node's mean ``(*, V, d)`` and the Cholesky factor ``(*, V, d, d)`` of its covariance given ``y``."""
        joint = self._joint_rows(y)
        centers = self._centers(y, joint)
        eye = torch.eye(self.dim, dtype=centers.dtype, device=centers.device)
        chols = (self.sigma * eye).expand(*centers.shape, self.dim).clone()
        if joint is not None:
            mask, rows = joint
            blocks = self.joint_chols[rows].unflatten(-2, (-1, self.dim))  # (n, V, d, V d)
            chols[mask] = torch.linalg.cholesky(blocks @ blocks.transpose(-2, -1))
        return centers, chols

    def node_whitened_distance(self, h: Tensor, y: Tensor) -> Tensor:
        r"""The Mahalanobis distance of every node's latent from its node's law given ``y``.

        :math:`\lVert L_v^{-1}(H_v - c_v) \rVert` with :math:`L_v L_v^\top` the covariance of
        :math:`H_v` given ``y`` (:meth:`node_confidence_regions`): :math:`\lVert H_v - c_v
        \rVert / \sigma` under the node law. Its square is chi-squared with ``d`` degrees of
        freedom when :math:`H` follows the law.

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.
        y : Tensor
            ``(*, V)`` labels, or a suffix of that shape.

        Returns
        -------
        Tensor
            ``(*, V)``.
        """
        self._check_h(h)
        labels = self._labels_like(h, y)
        self._check_y(labels)
        centers, chols = self._node_laws(labels)
        white = torch.linalg.solve_triangular(chols, (h - centers).unsqueeze(-1), upper=False)
        return white.squeeze(-1).norm(dim=-1)

    def node_contains(self, h: Tensor, y: Tensor, level: float) -> Tensor:
        """Whether each node's latent lies in its node's ``level`` region (:meth:`node_confidence_regions`).

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.
        y : Tensor
            ``(*, V)`` labels, or a suffix of that shape.
        level : float
            Coverage probability in ``(0, 1)``.

        Returns
        -------
        Tensor
            ``(*, V)`` bool.
        """
        return self.node_whitened_distance(h, y) <= chi_quantile(level, self.dim)

    def whitened_distance(self, h: Tensor, y: Tensor) -> Tensor:
        r"""The Mahalanobis distance of each whole latent sample from its law given ``y``.

        :math:`\lVert H - c(Y) \rVert / \sigma` over all :math:`V d` coordinates under the node
        law, :math:`\lVert L_Y^{-1}(H - \mu_Y) \rVert` under a label vector's joint Gaussian. Its
        square is chi-squared with :math:`V d` degrees of freedom when :math:`H` follows the law.

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.
        y : Tensor
            ``(*, V)`` labels, or a suffix of that shape.

        Returns
        -------
        Tensor
            ``(*,)``.
        """
        self._check_h(h)
        labels = self._labels_like(h, y)
        joint = self._joint_rows(labels)
        distance = (h - self.node_law_centers(labels)).flatten(-2).norm(dim=-1) / self.sigma
        if joint is None:
            return distance
        mask, rows = joint
        white = torch.linalg.solve_triangular(
            self.joint_chols[rows], (h[mask].flatten(-2) - self.joint_means[rows]).unsqueeze(-1), upper=False)
        distance = distance.clone()
        distance[mask] = white.squeeze(-1).norm(dim=-1)
        return distance

    def confidence_radius(self, level: float, num_nodes: int | None = None) -> float:
        r""":math:`\sqrt{\chi^2_{V d}{}^{-1}(\text{level})}`: the :meth:`whitened_distance` within
        which a whole sample of ``num_nodes`` nodes (default: the latent's ``V``) lies with
        probability ``level``."""
        return chi_quantile(level, (self.num_nodes if num_nodes is None else num_nodes) * self.dim)

    def confidence_region(self, y: Tensor, level: float) -> tuple[Tensor, Tensor]:
        r"""The ellipsoid holding exactly ``level`` of the whole latent sample's mass given ``y``.

        :math:`\{c + S u : \lVert u \rVert \le 1\}` over all :math:`V d` coordinates, with
        :math:`S = \sqrt{\chi^2_{V d}{}^{-1}(\text{level})}\, L` and :math:`L L^\top` the
        covariance of :math:`H` given ``y`` (:math:`\sigma^2 I`, or :math:`\Sigma_Y`). Because the
        flow is a bijection, its image in feature space holds exactly ``level`` of the model's
        samples of :math:`X \mid Y = y`.

        Returns
        -------
        centers : Tensor
            ``(*, V, d)``.
        scales : Tensor
            ``(*, V d, V d)`` lower-triangular :math:`S`, rows and columns node-major.
        """
        self._check_y(y)
        radius = self.confidence_radius(level, y.shape[-1])
        joint = self._joint_rows(y)
        centers = self._centers(y, joint)
        size = centers.shape[-2] * centers.shape[-1]
        eye = torch.eye(size, dtype=centers.dtype, device=centers.device)
        scales = (radius * self.sigma * eye).expand(*centers.shape[:-2], size, size).clone()
        if joint is not None:
            mask, rows = joint
            scales[mask] = radius * self.joint_chols[rows]
        return centers, scales

    def contains(self, h: Tensor, y: Tensor, level: float) -> Tensor:
        """Whether each whole latent sample lies in its ``level`` region (:meth:`confidence_region`):
        ``(*,)`` bool, true for a fraction ``level`` of the law's own samples."""
        return self.whitened_distance(h, y) <= self.confidence_radius(level, h.shape[-2])



def _without_label_vectors(module: NodeGaussianLatent, state_dict: dict, prefix: str, *args) -> None:
    """State dicts written before the label vectors were saved carry none."""
    state_dict.setdefault(prefix + "_extra_state", {})
