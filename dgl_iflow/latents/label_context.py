r"""The label-context law: every node's Gaussian mean moves with the whole label vector.

.. math::

    H_v \mid Y \sim N(c_v(Y), \sigma^2 I_d), \qquad
    c_v(Y) = \mu_{Y_v} + \sum_u \sum_{k \ge 1} [Y_u = k]\, B_{u k v},
    \qquad B \in \mathbb{R}^{V \times (K - 1) \times V \times d}

(:math:`B` learned, zero at start), so that which nodes carry which label moves the law of every
other node: traffic sensors are all higher when a few are anomalous. Given :math:`Y` the nodes
are still independent, but the law of :math:`Y` given :math:`H` no longer factorizes over the
nodes, so prediction is Bayes' rule over the label vectors of the training set.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .node_gaussian import NodeGaussianLatent

__all__ = ["LabelContextLatent"]


class LabelContextLatent(NodeGaussianLatent):
    """:class:`~dgl_iflow.latents.NodeGaussianLatent` whose node means :math:`c_v(Y)` depend on the whole label vector.

    Parameters are those of :class:`~dgl_iflow.latents.NodeGaussianLatent`; ``num_nodes`` is
    also the number of nodes of every label vector.

    Attributes
    ----------
    context : Tensor
        ``(V, K - 1, V, d)`` parameter :math:`B`: ``context[u, k - 1, v]`` moves node ``v``'s
        mean when node ``u`` has label ``k``.
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
        super().__init__(num_classes, dim, sigma=sigma, means=means, trainable_means=trainable_means,
                         min_separation=min_separation, num_nodes=num_nodes, priors=priors)
        self.context = nn.Parameter(torch.zeros(num_nodes, num_classes - 1, num_nodes, dim))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, label_context=True"

    def node_law_centers(self, y: Tensor) -> Tensor:
        """:math:`c(Y)` ``(*, V, d)`` for labels ``(*, V)`` of all ``V`` nodes, ignoring any joint Gaussians."""
        if y.shape[-1] != self.context.shape[0]:
            raise ValueError(f"label_context needs labels of all {self.context.shape[0]} nodes, got {tuple(y.shape)}")
        present = nn.functional.one_hot(y, self.num_classes)[..., 1:].to(self.context.dtype)
        return self.means[y] + torch.einsum("...uk,ukvd->...vd", present, self.context)

    def posterior(self, h: Tensor) -> Tensor:
        """Node marginals of the posterior over the training set's label vectors, ``(*, V, K)``
        (:meth:`~dgl_iflow.latents.NodeGaussianLatent.label_vector_posterior`)."""
        return self.label_vector_posterior(h)

    def fit_before_training(self, y_train: Tensor) -> None:
        """The class priors and the label vectors of ``y_train`` ``(N, V)``, the prior of :meth:`posterior`."""
        self.fit_priors(y_train.reshape(-1))
        self.fit_label_vectors(y_train)
