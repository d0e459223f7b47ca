"""Joint Gaussians per training label vector, fitted to a trained flow's latents (the traffic recipe's last step).

Not a law of its own: a refinement that a Gaussian node law
(:class:`~dgl_iflow.latents.NodeGaussianLatent`, :class:`~dgl_iflow.latents.LabelContextLatent`)
fits in :meth:`~dgl_iflow.latents.LatentLaw.fit_after_training`. For every label vector of the
training set it replaces the law's density by one Gaussian over all ``V d`` latent coordinates,
shrunk towards the law's own, and keeps the law for every other label vector. Here is the
fitting; the law holds the result and uses it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussian import gaussian_log_prob

__all__ = ["MAX_JOINT_DIM", "PSEUDO_COUNTS", "fit_joint_gaussians"]

#: Pseudo-counts :func:`fit_joint_gaussians` chooses among by cross-validation.
PSEUDO_COUNTS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: The largest ``V d`` whose joint ``(V d, V d)`` covariances per label vector are stored.
MAX_JOINT_DIM = 2048


def _shrunk_gaussians(
    flat: Tensor, group: Tensor, prior: Tensor, sigma: float, pseudo_count: float
) -> tuple[Tensor, Tensor]:
    """Means ``(M, D)`` and Cholesky factors ``(M, D, D)`` of
    :func:`fit_joint_gaussians` for rows ``flat`` ``(N, D)`` in groups
    ``group`` ``(N,)``; a group without rows gets the prior: ``prior`` ``(M, D)``, ``sigma^2 I``."""
    num, dim = prior.shape
    counts = torch.bincount(group, minlength=num).to(flat.dtype)
    sums = torch.zeros_like(prior).index_add_(0, group, flat)
    means = (sums + pseudo_count * prior) / (counts + pseudo_count).unsqueeze(-1)
    covariances = torch.empty(num, dim, dim, dtype=flat.dtype, device=flat.device)
    eye = torch.eye(dim, dtype=flat.dtype, device=flat.device)
    for m in range(num):
        diff = flat[group == m] - means[m]
        covariances[m] = (diff.T @ diff + pseudo_count * sigma**2 * eye) / (counts[m] + pseudo_count)
    return means, torch.linalg.cholesky(covariances)


def _held_out_log_likelihood(
    flat: Tensor, group: Tensor, fold: Tensor, folds: int, prior: Tensor, sigma: float, pseudo_count: float
) -> Tensor:
    """Log-likelihood ``(N,)`` of every row of ``flat`` under the Gaussians fitted without its fold."""
    out = torch.empty(len(flat), dtype=flat.dtype, device=flat.device)
    for f in range(folds):
        held_out = fold == f
        if not held_out.any():
            continue
        means, chols = _shrunk_gaussians(flat[~held_out], group[~held_out], prior, sigma, pseudo_count)
        for m in group[held_out].unique().tolist():
            rows = held_out & (group == m)
            out[rows] = gaussian_log_prob(flat[rows].T, means[m], chols[m])
    return out




def fit_joint_gaussians(
    flat: Tensor, group: Tensor, prior: Tensor, sigma: float, pseudo_count: float | None = None, folds: int = 5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, float]:
    r"""One Gaussian over all ``D = V d`` latent coordinates per label vector, shrunk towards a prior law.

    For the :math:`n` rows :math:`h_i` of label vector :math:`Y`, with :math:`c_Y` the prior's
    mean and :math:`s` the pseudo-count,

    .. math::

        \mu_Y = \frac{\sum_i h_i + s\, c_Y}{n + s}, \qquad
        \Sigma_Y = \frac{\sum_i (h_i - \mu_Y)(h_i - \mu_Y)^\top + s\,\sigma^2 I}{n + s}:

    the rows' mean and scatter, shrunk towards the prior :math:`N(c_Y, \sigma^2 I)` as if it
    had been seen :math:`s` more times, so every label vector gets a positive definite
    :math:`\Sigma_Y`, even one seen once.

    Parameters
    ----------
    flat : Tensor
        ``(N, D)`` float64 latents of the training rows.
    group : Tensor
        ``(N,)`` index of every row's label vector in ``prior``.
    prior : Tensor
        ``(M, D)`` float64 prior means :math:`c_Y`.
    sigma : float
        Prior standard deviation.
    pseudo_count : float, optional
        :math:`s > 0`. By default, of :data:`PSEUDO_COUNTS`, the largest whose held-out
        log-likelihood of the rows in ``folds``-fold cross-validation is within one standard
        error of the best one's (the standard error of the sum of the per-row differences):
        the most shrinkage the data cannot tell from the best.
    folds : int
        Folds of that cross-validation.
    generator : torch.Generator, optional
        Draws the folds.

    Returns
    -------
    means : Tensor
        ``(M, D)``.
    chols : Tensor
        ``(M, D, D)`` lower-triangular Cholesky factors of the :math:`\Sigma_Y`.
    pseudo_count : float
        The :math:`s` used.
    """
    if pseudo_count is None:
        fold = torch.randint(0, folds, (len(flat),), generator=generator).to(flat.device)
        scores = torch.stack([_held_out_log_likelihood(flat, group, fold, folds, prior, sigma, s)
                              for s in PSEUDO_COUNTS])  # (S, N)
        lead = scores - scores[scores.sum(1).argmax()]
        standard_error = lead.std(dim=1) * math.sqrt(len(flat))
        within = torch.nonzero(lead.sum(1) >= -standard_error).flatten()
        pseudo_count = PSEUDO_COUNTS[int(within.max())]
    means, chols = _shrunk_gaussians(flat, group, prior, sigma, pseudo_count)
    return means, chols, float(pseudo_count)
