"""The contract every latent law of dgl_iflow keeps: the law of the latent ``H`` given the labels ``Y``.

A flow model maps node features ``X`` to latents ``H = F(X)`` of the same shape and leaves
everything that depends on the labels to its law: the log-density of ``H`` given ``Y``
(training and likelihoods), draws of ``H`` given ``Y`` (generation, through ``F^{-1}``) and the
posterior of ``Y`` given ``H`` (prediction: the flow's log-determinant does not depend on the
labels, so Bayes' rule in the latent is Bayes' rule on ``X``). A law may also learn from the
training labels before training and from the trained flow's latents after it: the trainers
call :meth:`LatentLaw.fit_before_training` and :meth:`LatentLaw.fit_after_training` and
nothing else of a law by name.

Layouts follow the models: latents are sample-first ``(*, V, d)`` (any sample dimensions,
then nodes, features last) and labels ``(*, V)``; labels shaped like a suffix of
``h.shape[:-1]`` broadcast over the leading sample dimensions.

A law is saved as any module is: parameters and buffers in the state dict, and what is fitted
to data of a size the constructor does not know in ``get_extra_state``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["LatentLaw"]


class LatentLaw(nn.Module, ABC):
    r"""The law :math:`q(H \mid Y)` of node latents given node labels.

    Attributes
    ----------
    num_classes : int or None
        Number of label values ``K`` (the last dimension of :meth:`posterior`); ``None`` for
        real-valued targets.
    dim : int
        Latent size ``d`` per node.
    num_nodes : int
        Number of nodes ``V`` the law was built for.
    fits_after_training : bool
        Whether :meth:`fit_after_training` does anything, so a trainer can skip computing the
        training latents for a law that would ignore them.
    discrete : bool
        Whether the labels are classes (int64 ``(*, V)`` in ``[0, K)``) or real-valued targets
        (floats ``(*, V)`` or ``(*, V, q)``): models convert and check labels, and choose between
        class probabilities and a regression's posterior, by it.
    label_dim : int or None
        ``q`` for real-valued targets ``(*, V, q)``; ``None`` for one label per node, ``(*, V)``
        (every law of classes).
    """

    fits_after_training: ClassVar[bool] = False
    discrete: ClassVar[bool] = True
    label_dim: int | None = None

    num_classes: int | None
    dim: int
    num_nodes: int

    @abstractmethod
    def log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log q(H \mid Y)` summed over nodes and features.

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.
        y : Tensor
            ``(*, V)`` labels, or a suffix of that shape.

        Returns
        -------
        Tensor
            ``(*,)``, one value per sample.
        """

    @abstractmethod
    def sample(self, y: Tensor, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw latents given labels.

        Parameters
        ----------
        y : Tensor
            ``(V,)`` labels when ``n`` is given, otherwise ``(*, V)``.
        n : int, optional
            Number of samples for the single label vector ``y``.
        generator : torch.Generator, optional
            Source of randomness, on the law's device.

        Returns
        -------
        Tensor
            ``(n, V, d)`` when ``n`` is given, else ``(*, V, d)``.
        """

    @abstractmethod
    def centers(self, y: Tensor) -> Tensor:
        r"""The mean :math:`E[H \mid Y]` of every node's latent, ``(*, V, d)``, for labels ``(*, V)``:
        where the JKO trainer's transport pulls the latents."""

    @abstractmethod
    def posterior(self, h: Tensor) -> Tensor | torch.distributions.Distribution:
        r"""The prediction of every node's label from the latents: the law of :math:`Y_v` given :math:`H`.

        Parameters
        ----------
        h : Tensor
            ``(*, V, d)`` latents.

        Returns
        -------
        Tensor or Distribution
            For class labels the probabilities :math:`P(Y_v = k \mid H)`, ``(*, V, K)``, summing
            to one over ``K``; for real-valued targets a distribution of batch shape ``(*, V)``.
        """

    def fit_before_training(self, y_train: Tensor) -> None:
        """Learn what the law takes from the training labels ``(N, V)`` alone, and forget anything
        :meth:`fit_after_training` fitted to earlier weights; nothing by default.

        Trainers call it before training starts, and again when they resume a run that goes on
        training, with the same labels: it must give the same result every time.
        """

    def fit_after_training(self, h_train: Tensor, y_train: Tensor, generator: torch.Generator | None = None) -> None:
        """Fit the law to the trained flow's latents ``(N, V, d)`` of the training rows and their
        labels ``(N, V)``, the flow held fixed; nothing by default (:attr:`fits_after_training`).

        ``generator`` draws whatever randomness the fit needs (cross-validation folds).
        """
