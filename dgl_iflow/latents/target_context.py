r"""The target-context law: every node's latent mean moves with the targets of all nodes.

.. math::

    H_v \mid Y \sim N\Big(A Y_v + b + \sum_u C_{u v} Y_u,\ \sigma^2 I_d\Big), \qquad
    C \in \mathbb{R}^{V \times q \times V \times d}

(:math:`C` learned, zero at start, where it is :class:`~dgl_iflow.latents.LinearGaussianLatent`),
the continuous analogue of :class:`~dgl_iflow.latents.LabelContextLatent`: what the other nodes'
targets are moves the law of every node, as a city's next irradiance says something of its
neighbours' present. The latent mean is a linear map :math:`M \operatorname{vec} Y + b` of all
targets, with :math:`M \in \mathbb{R}^{V d \times V q}`, so prediction stays conjugate but joint:
with a Gaussian prior :math:`\operatorname{vec} Y \sim N(m, S)` over all nodes' targets, fitted to
the training targets,

.. math::

    \operatorname{vec} Y \mid H = h \sim N(\hat y, P^{-1}), \qquad
    P = S^{-1} + M^\top M / \sigma^2, \qquad
    \hat y = P^{-1}\left(S^{-1} m + M^\top (\operatorname{vec} h - \operatorname{vec} b) / \sigma^2\right),

whose per-node marginals give the predictions and intervals. It is meant for graphs of tens to
hundreds of nodes: :math:`C` has :math:`V^2 q d` entries and the posterior solves a
:math:`V q \times V q` system.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .gaussian import linear_gaussian_posterior
from .linear_gaussian import LinearGaussianLatent

__all__ = ["TargetContextLatent"]


class TargetContextLatent(LinearGaussianLatent):
    """:class:`~dgl_iflow.latents.LinearGaussianLatent` whose node means depend on the targets of all nodes.

    Parameters are those of :class:`~dgl_iflow.latents.LinearGaussianLatent` (``options`` its
    keywords); the context :math:`C` is learned whether or not ``trainable`` learns :math:`A` and
    :math:`b`.

    Attributes
    ----------
    context : Tensor
        ``(V, q, V, d)`` parameter :math:`C`: ``context[u, j, v]`` moves node ``v``'s mean per
        unit of node ``u``'s target coordinate ``j``.
    joint_prior_mean, joint_prior_cov : Tensor
        ``(V q,)`` and ``(V q, V q)`` buffers :math:`m, S` of all targets together, node by node:
        :math:`N(0, I)` until :meth:`fit_before_training`.
    """

    def __init__(self, dim: int, num_nodes: int, **options: Any) -> None:
        super().__init__(dim, num_nodes, **options)
        q = self.weight.shape[1]
        self.context = nn.Parameter(torch.zeros(num_nodes, q, num_nodes, dim))
        self.register_buffer("joint_prior_mean", torch.zeros(num_nodes * q))
        self.register_buffer("joint_prior_cov", torch.eye(num_nodes * q))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, target_context=True"

    def centers(self, y: Tensor) -> Tensor:
        """:math:`A Y_v + b + \\sum_u C_{uv} Y_u` ``(*, V, d)`` for targets ``(*, V)`` or ``(*, V, q)``."""
        targets = self._targets(y)
        return targets @ self.weight.T + self.bias + torch.einsum("...uj,ujvd->...vd", targets, self.context)

    def mean_map(self) -> Tensor:
        """:math:`M` ``(V d, V q)``: the latent mean is ``M vec(Y) + vec(b)``, rows and columns node by node."""
        num_nodes = self.num_nodes
        own = torch.kron(torch.eye(num_nodes, dtype=self.weight.dtype, device=self.weight.device), self.weight)
        return own + self.context.permute(2, 3, 0, 1).reshape(num_nodes * self.dim, -1)

    def fit_before_training(self, y_train: Tensor) -> None:
        r"""The joint prior :math:`N(m, S)` of all targets ``(N, V)`` or ``(N, V, q)``: their mean and
        covariance, kept positive definite by :math:`10^{-6}` times the mean variance (at least
        :math:`10^{-6}`) on the diagonal. The per-node priors of
        :class:`~dgl_iflow.latents.LinearGaussianLatent`, its marginals, are fitted too, so that
        both describe the same targets."""
        super().fit_before_training(y_train)
        flat = self._targets(y_train).detach().flatten(-2)  # (N, V q)
        centred = flat - flat.mean(0)
        cov = centred.T @ centred / max(len(flat) - 1, 1)
        jitter = 1e-6 * cov.diagonal().mean().clamp_min(1.0)
        self.joint_prior_mean.copy_(flat.mean(0))
        self.joint_prior_cov.copy_(cov + jitter * torch.eye(len(cov), dtype=cov.dtype, device=cov.device))

    def posterior_moments(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*, V, q)`` and per-node covariance ``(*, V, q, q)`` of every node's target given
        all latents: the marginals of the joint posterior (module docstring)."""
        if h.ndim < 2 or h.shape[-2:] != (self.num_nodes, self.dim):
            raise ValueError(f"h must have shape (*, V, d) = (*, {self.num_nodes}, {self.dim}), got {tuple(h.shape)}")
        q = self.weight.shape[1]
        mean, cov = linear_gaussian_posterior(self.joint_prior_mean, self.joint_prior_cov, self.mean_map(),
                                              self.bias.repeat(self.num_nodes), self.sigma, h.flatten(-2))
        blocks = cov.unflatten(0, (self.num_nodes, q)).unflatten(-1, (self.num_nodes, q))  # (V, q, V, q)
        marginal = blocks.diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # node v's (q, q) block of the joint
        mean = mean.unflatten(-1, (self.num_nodes, q))
        return mean, marginal.expand(*mean.shape, q)
