r"""A law for real-valued node targets: :math:`H_v \mid Y_v = y \sim N(A y + b, \sigma^2 I_d)`.

The continuous analogue of :class:`~dgl_iflow.latents.NodeGaussianLatent`: the class means
:math:`\mu_k` become a linear map of the target, so generation ``X | Y = y`` works for any real
``y``, inside the training range or not. Prediction puts a Gaussian prior on every node's target,
:math:`Y_v \sim N(m_v, S_v)` fitted to the training targets (:meth:`fit_before_training`), and is
then conjugate: given the latent,

.. math::

    Y_v \mid H_v = h \sim N(\hat y_v, C_v), \qquad
    C_v = \left(S_v^{-1} + A^\top A / \sigma^2\right)^{-1}, \qquad
    \hat y_v = C_v \left(S_v^{-1} m_v + A^\top (h - b) / \sigma^2\right),

in closed form, as are its intervals. Bayes' rule in the latent is Bayes' rule on ``X``: the
flow's log-determinant does not depend on the targets.

Targets are ``(*, V)`` floats (one per node, ``label_dim=None``) or ``(*, V, q)``. Models build
it as ``latent="linear_gaussian"`` (:data:`~dgl_iflow.latents.LAWS`), with ``num_classes=None``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import LatentLaw
from .gaussian import central_interval, linear_gaussian_posterior

__all__ = ["LinearGaussianLatent"]


class LinearGaussianLatent(LatentLaw):
    r"""Node latents Gaussian around a linear map of the node's real target.

    .. math::

        \log q(H \mid Y) = \sum_v \log N(H_v;\ A Y_v + b,\ \sigma^2 I_d)

    Parameters
    ----------
    dim : int
        Latent size ``d`` per node.
    num_nodes : int
        Number of nodes ``V`` (the prior of :meth:`posterior` is per node).
    label_dim : int, optional
        ``q``: targets are ``(*, V, q)``; ``None`` for one target per node, ``(*, V)``.
    sigma : float
        Standard deviation of every latent coordinate given the target.
    weight : Tensor, optional
        ``(d, q)`` map :math:`A`; by default ``scale`` times the first ``q`` columns of the
        identity (``q <= d``) or a Gaussian matrix with columns of norm about ``scale``.
    scale : float
        Size of the default :math:`A`: how far apart in units of the latent targets one apart are.
    trainable : bool
        Learn :math:`A` and :math:`b` with the flow. Fixed by default: like the class means, a
        fixed map keeps the targets from collapsing together in the latent.

    Attributes
    ----------
    weight, bias : Tensor
        :math:`A` ``(d, q)`` and :math:`b` ``(d,)``: parameters with ``trainable``, else buffers.
    prior_mean, prior_cov : Tensor
        ``(V, q)`` and ``(V, q, q)`` buffers :math:`m_v, S_v`: :math:`N(0, I)` until
        :meth:`fit_before_training`.
    """

    num_classes = None
    discrete = False

    def __init__(
        self,
        dim: int,
        num_nodes: int,
        label_dim: int | None = None,
        sigma: float = 1.0,
        weight: Tensor | None = None,
        scale: float = 3.0,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        q = 1 if label_dim is None else label_dim
        if dim < 1 or num_nodes < 1 or q < 1:
            raise ValueError(f"dim, num_nodes and label_dim must be >= 1, got {dim}, {num_nodes}, {label_dim}")
        if not (sigma > 0.0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be positive and finite, got {sigma}")
        self.dim, self.num_nodes, self.label_dim, self.sigma = dim, num_nodes, label_dim, float(sigma)
        if weight is None:
            if q <= dim:
                weight = scale * torch.eye(dim, q)
            else:
                weight = scale * torch.randn(dim, q) / math.sqrt(dim)
        weight = torch.as_tensor(weight, dtype=torch.get_default_dtype()).clone()
        if weight.shape != (dim, q):
            raise ValueError(f"weight must have shape (d, q) = ({dim}, {q}), got {tuple(weight.shape)}")
        bias = torch.zeros(dim)
        if trainable:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.register_buffer("prior_mean", torch.zeros(num_nodes, q))
        self.register_buffer("prior_cov", torch.eye(q).expand(num_nodes, q, q).clone())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_nodes={self.num_nodes}, label_dim={self.label_dim}, sigma={self.sigma:g}"

    def _targets(self, y: Tensor) -> Tensor:
        """``y`` as ``(*, V, q)`` floats in the law's dtype, checked."""
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        y = y.to(self.weight.dtype)
        if self.label_dim is None:
            y = y.unsqueeze(-1)
        if y.ndim < 2 or y.shape[-2:] != (self.num_nodes, self.weight.shape[1]):
            expected = "(*, V)" if self.label_dim is None else f"(*, V, {self.label_dim})"
            raise ValueError(f"targets must have shape {expected} with V={self.num_nodes}, got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("targets contain NaN or inf")
        return y

    def _labels(self, y: Tensor) -> Tensor:
        """Back from ``(*, V, q)`` to the targets' own layout."""
        return y.squeeze(-1) if self.label_dim is None else y

    def centers(self, y: Tensor) -> Tensor:
        """:math:`A y_v + b` ``(*, V, d)`` for targets ``(*, V)`` or ``(*, V, q)``."""
        return self._targets(y) @ self.weight.T + self.bias

    def log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        """``log q(H | Y)`` ``(*,)`` for latents ``(*, V, d)`` and targets of the same leading shape (or a suffix)."""
        if h.ndim < 2 or h.shape[-2:] != (self.num_nodes, self.dim):
            raise ValueError(f"h must have shape (*, V, d) = (*, {self.num_nodes}, {self.dim}), got {tuple(h.shape)}")
        sq = (h - self.centers(y)).square().sum(dim=(-2, -1))
        return -0.5 * sq / self.sigma**2 - 0.5 * self.num_nodes * self.dim * math.log(2.0 * math.pi * self.sigma**2)

    def sample(self, y: Tensor, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Latents given targets: ``(n, V, d)`` for one target vector and ``n``, else ``(*, V, d)``."""
        centers = self.centers(y)
        if n is not None:
            if centers.ndim != 2:
                raise ValueError(f"sample with n needs the targets of one sample, got {tuple(y.shape)}")
            if n < 1:
                raise ValueError(f"n must be >= 1, got {n}")
            centers = centers.expand(n, -1, -1)
        # Drawn nodes first, as the class-conditional laws draw.
        noise = torch.randn(centers.movedim(-2, 0).shape, generator=generator, dtype=centers.dtype,
                            device=centers.device).movedim(0, -2)
        return centers + self.sigma * noise

    def fit_before_training(self, y_train: Tensor) -> None:
        r"""The prior :math:`N(m_v, S_v)` of every node's target: the mean and covariance of its
        training targets ``(N, V)`` or ``(N, V, q)``, the covariance kept positive definite by
        :math:`10^{-6}` times its trace, or at least :math:`10^{-6}`, on the diagonal (one row, or
        constant targets, would make it singular)."""
        y = self._targets(y_train).detach()
        if y.ndim != 3:
            raise ValueError(f"fit_before_training needs targets of shape (N, V[, q]), got {tuple(y_train.shape)}")
        mean = y.mean(0)
        centred = (y - mean).movedim(0, -1)  # (V, q, N)
        cov = centred @ centred.transpose(-2, -1) / max(len(y) - 1, 1)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        jitter = 1e-6 * cov.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1.0)
        self.prior_mean.copy_(mean)
        self.prior_cov.copy_(cov + jitter[:, None, None] * eye)

    def posterior_moments(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*, V, q)`` and covariance ``(*, V, q, q)`` of every node's target given the latents
        (the module docstring's :math:`\\hat y_v` and :math:`C_v`; the covariance does not depend on ``h``)."""
        if h.ndim < 2 or h.shape[-2:] != (self.num_nodes, self.dim):
            raise ValueError(f"h must have shape (*, V, d) = (*, {self.num_nodes}, {self.dim}), got {tuple(h.shape)}")
        mean, cov = linear_gaussian_posterior(self.prior_mean, self.prior_cov, self.weight, self.bias, self.sigma, h)
        return mean, cov.expand(*mean.shape, mean.shape[-1])

    def posterior(self, h: Tensor) -> torch.distributions.MultivariateNormal:
        """The law of every node's target given the latents: batch shape ``(*, V)``, events ``(q,)``."""
        mean, cov = self.posterior_moments(h)
        return torch.distributions.MultivariateNormal(mean, cov)

    def posterior_mean(self, h: Tensor) -> Tensor:
        """:math:`E[Y_v \\mid H]` in the targets' layout, ``(*, V)`` or ``(*, V, q)``: the prediction."""
        return self._labels(self.posterior_moments(h)[0])

    def posterior_interval(self, h: Tensor, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Equal-tailed intervals holding ``level`` of every target coordinate's posterior mass.

        Returns
        -------
        lower, upper : Tensor
            In the targets' layout, ``(*, V)`` or ``(*, V, q)``.
        """
        lower, upper = central_interval(*self.posterior_mean_and_std(h), level)
        return self._labels(lower), self._labels(upper)

    def posterior_mean_and_std(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation ``(*, V, q)`` of every target coordinate's posterior given the latents."""
        mean, cov = self.posterior_moments(h)
        return mean, cov.diagonal(dim1=-2, dim2=-1).sqrt()
