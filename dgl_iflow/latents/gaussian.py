"""Gaussian tools the latent laws share: where to put class means, and Gaussian densities and radii."""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = ["central_interval", "chi_quantile", "default_separation", "gaussian_log_prob", "linear_gaussian_posterior",
           "normal_quantile", "spread_means"]


def default_separation(
    num_classes: int, num_nodes: int, sigma: float = 1.0, delta: float = 0.01
) -> float:
    r"""Mean separation that keeps every node on the side of its own mean.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``.
    num_nodes : int
        Number of nodes ``V`` the guarantee must hold for simultaneously.
    sigma : float
        Standard deviation of each latent coordinate.
    delta : float
        Allowed probability that at least one node is misplaced.

    Returns
    -------
    float
        ``c`` such that pairwise mean distances ``>= c`` imply the guarantee.

    Notes
    -----
    Let ``H_v = mu_k + sigma Z`` with ``Z ~ N(0, I_d)``.  ``H_v`` is at least
    as close to a wrong mean ``mu_j`` as to ``mu_k`` exactly when the
    projection of ``sigma Z`` on the unit vector ``u`` from ``mu_k`` to
    ``mu_j`` reaches half their distance ``D``.  Since ``u^T Z ~ N(0, 1)``
    the Gaussian tail bound gives

    .. math::

        P\left(u^\top Z \ge \frac{D}{2\sigma}\right)
        \le \exp\left(-\frac{D^2}{8\sigma^2}\right).

    A union bound over ``V`` nodes and the ``K - 1`` wrong classes, relaxed
    to ``K`` so that ``K = 1`` stays defined, bounds the probability of any
    misplaced node by ``K V exp(-D^2 / (8 sigma^2))``, which is at most
    ``delta`` once

    .. math::

        D \ge c = 2\sigma\sqrt{2\log\frac{K V}{\delta}}.

    ``c`` grows like ``sqrt(log(K V))`` in units of ``sigma``.
    """
    if num_classes < 1 or num_nodes < 1:
        raise ValueError(
            f"num_classes and num_nodes must be >= 1, got {num_classes} and {num_nodes}"
        )
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if sigma <= 0.0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return 2.0 * sigma * math.sqrt(2.0 * math.log(num_classes * num_nodes / delta))


def spread_means(num_classes: int, dim: int, separation: float) -> Tensor:
    """Place ``K`` points in ``R^d`` pairwise at least ``separation`` apart.

    If ``d >= K - 1`` the points form a regular simplex with all pairwise
    distances equal to ``separation`` (the most compact placement).
    Otherwise they are the ``K`` points of the cubic lattice with spacing
    ``separation`` nearest the origin (a line for ``d = 1``), using at most
    ``ceil(log2 K)`` coordinates so that enumeration stays small.  Either way
    the points are centred at the origin.

    Parameters
    ----------
    num_classes : int
        Number of points ``K``.
    dim : int
        Ambient dimension ``d``.
    separation : float
        Minimum pairwise distance.

    Returns
    -------
    Tensor
        ``(K, d)`` in the default dtype.
    """
    if num_classes < 1 or dim < 1:
        raise ValueError(f"num_classes and dim must be >= 1, got {num_classes} and {dim}")
    points = torch.zeros(num_classes, dim, dtype=torch.float64)
    if num_classes == 1:
        return points.to(torch.get_default_dtype())
    if dim >= num_classes - 1:
        # Scaled basis vectors of R^K are pairwise `separation` apart; an
        # orthonormal basis of the sum-zero hyperplane maps them isometrically
        # into K - 1 coordinates.
        vertices = torch.eye(num_classes, dtype=torch.float64) * (separation / math.sqrt(2.0))
        vertices = vertices - vertices.mean(0)
        basis = torch.linalg.svd(vertices, full_matrices=False).Vh[: num_classes - 1]
        points[:, : num_classes - 1] = vertices @ basis.T
        return points.to(torch.get_default_dtype())
    used = min(dim, math.ceil(math.log2(num_classes)))
    half_width = 1
    while (2 * half_width + 1) ** used < num_classes:
        half_width += 1
    grid = torch.tensor(
        list(itertools.product(range(-half_width, half_width + 1), repeat=used)),
        dtype=torch.float64,
    )
    # A stable sort keeps the tie order of `product`, so the choice is deterministic.
    nearest = torch.argsort(grid.square().sum(1), stable=True)[:num_classes]
    chosen = grid[nearest] * separation
    points[:, :used] = chosen - chosen.mean(0)
    return points.to(torch.get_default_dtype())



def chi_quantile(level: float, degrees: int) -> float:
    r""":math:`\sqrt{\chi^2_k{}^{-1}(\text{level})}` for ``degrees`` :math:`k`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    # Imported here: scipy.stats costs 1.6 s and 30 MB at import, for this one quantile.
    from scipy.stats import chi2

    return math.sqrt(chi2.ppf(level, degrees))


def normal_quantile(level: float) -> float:
    r""":math:`\Phi^{-1}((1 + \text{level}) / 2)`: the half-width, in standard deviations, of the
    central interval holding ``level`` of a normal law."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()


def central_interval(mean: Tensor, std: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """``(lower, upper)``: ``mean`` minus and plus :func:`normal_quantile` of ``level`` times ``std``,
    the central interval holding ``level`` of a normal law of that mean and standard deviation."""
    half = normal_quantile(level) * std
    return mean - half, mean + half


def linear_gaussian_posterior(
    prior_mean: Tensor, prior_cov: Tensor, weight: Tensor, bias: Tensor, sigma: float, h: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""The law of :math:`y \sim N(m, S)` given :math:`h = W y + b + \sigma \varepsilon`, in closed form.

    .. math::

        E[y \mid h] = m + G (h - W m - b), \qquad \operatorname{Cov}[y \mid h] = S - G W S,
        \qquad G = S W^\top (W S W^\top + \sigma^2 I)^{-1},

    through a Cholesky factor of :math:`W S W^\top + \sigma^2 I`, which :math:`\sigma > 0` keeps
    well conditioned however near singular :math:`S` is (the form with :math:`S^{-1}` is not),
    and in float64.

    Parameters
    ----------
    prior_mean, prior_cov : Tensor
        ``(*B, q)`` and ``(*B, q, q)``: :math:`m, S` of every one of a batch ``B`` of problems.
    weight, bias : Tensor
        ``(*B, p, q)`` :math:`W` and ``(*B, p)`` :math:`b`, or shared: ``(p, q)`` and ``(p,)``.
    sigma : float
        :math:`\sigma > 0`.
    h : Tensor
        ``(*, *B, p)`` observations.

    Returns
    -------
    mean, cov : Tensor
        ``(*, *B, q)`` and ``(*B, q, q)`` (the covariance does not depend on ``h``), in ``h``'s dtype.
    """
    m, s, w, b = (t.to(torch.float64) for t in (prior_mean, prior_cov, weight, bias))
    s_wt = s @ w.transpose(-2, -1)  # (*B, q, p)
    eye = torch.eye(w.shape[-2], dtype=torch.float64, device=w.device)
    chol = torch.linalg.cholesky(w @ s_wt + sigma**2 * eye)
    gain_t = torch.cholesky_solve(s_wt.transpose(-2, -1), chol)  # G^T = K^{-1} W S, (*B, p, q)
    cov = s - s_wt @ gain_t
    residual = h.to(torch.float64) - b - (w @ m.unsqueeze(-1)).squeeze(-1)
    mean = m + (residual.unsqueeze(-2) @ gain_t).squeeze(-2)
    # Symmetric to rounding, as MultivariateNormal requires.
    return mean.to(h.dtype), ((cov + cov.transpose(-2, -1)) / 2).to(h.dtype)


def gaussian_log_prob(x: Tensor, mean: Tensor, chol: Tensor) -> Tensor:
    r"""Log-density of the columns of ``x`` under :math:`N(\mu, L L^\top)`.

    .. math::

        \log N(x; \mu, L L^\top) = -\tfrac12 \lVert L^{-1}(x - \mu) \rVert^2
            - \sum_i \log L_{ii} - \tfrac{D}{2} \log 2\pi

    Parameters
    ----------
    x : Tensor
        ``(*, D, n)``: ``n`` points as columns, so that one factor serves them all.
    mean : Tensor
        ``(*, D)``.
    chol : Tensor
        ``(*, D, D)`` lower-triangular with a positive diagonal.

    Returns
    -------
    Tensor
        ``(*, n)``.
    """
    white = torch.linalg.solve_triangular(chol, x - mean.unsqueeze(-1), upper=False)
    log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1, keepdim=True)
    return -0.5 * (white.square().sum(-2) + x.shape[-2] * math.log(2.0 * math.pi)) - log_det


