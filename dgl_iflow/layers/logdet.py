"""Log-determinants of :math:`I + J_g` for invertible residual blocks."""
from __future__ import annotations

import torch
from torch import Tensor


def exact_logdet(jacobian: Tensor) -> Tensor:
    r""":math:`\log |\det(I + J)|` for a batch of square Jacobians ``(*, n, n)``; shape ``(*,)``."""
    identity = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
    return torch.linalg.slogdet(identity + jacobian).logabsdet


def roulette_survival(num_terms: int, n_exact_terms: int, stop_probability: float) -> Tensor:
    r""":math:`P(N \ge k)` for :math:`k = 0, \dots,` ``num_terms``, where
    :math:`N = n_{exact} + G` and :math:`G` is geometric: :math:`P(G \ge j) = (1 - p)^j`."""
    k = torch.arange(num_terms + 1, dtype=torch.float64)
    return (1.0 - stop_probability) ** (k - n_exact_terms).clamp(min=0)


def power_series_logdet(
    residual: Tensor,
    x: Tensor,
    *,
    sample_dims: tuple[int, ...],
    n_exact_terms: int = 2,
    stop_probability: float = 0.5,
    n_probes: int = 1,
    neumann_gradient: bool = True,
    create_graph: bool = True,
) -> Tensor:
    r"""Unbiased estimate of :math:`\log\det(I + J_g(x))` per sample (Chen et al., 2019).

    .. math::
        \log\det(I + J) = \mathbb{E}_{N, v}\left[\sum_{k=1}^{N}
        \frac{(-1)^{k+1}}{k}\, \frac{v^\top J^k v}{P(N \ge k)}\right],

    valid when :math:`\mathrm{Lip}(g) < 1`, with Hutchinson probes :math:`v \sim N(0, I)` and
    Russian-roulette truncation :math:`N = n_{exact} + \mathrm{Geometric}(p)`. The returned
    value is this unbiased estimate. Its gradient is, with ``neumann_gradient``, the
    unbiased Neumann-series estimate

    .. math::
        \nabla \log\det(I + J) = \mathbb{E}\left[\Big(\sum_{k=0}^{N}
        \frac{(-1)^k}{P(N \ge k)} v^\top J^k\Big) (\nabla J)\, v\right],

    which needs one differentiable vector-Jacobian product instead of back-propagating
    through all :math:`N` of them; otherwise the series itself is differentiated.

    Parameters
    ----------
    residual : Tensor
        :math:`g(x)`, computed from ``x`` with autograd recording.
    x : Tensor
        Input that requires grad, same shape as ``residual``.
    sample_dims : tuple of int
        Dimensions of ``x`` that index samples; the rest are summed in the trace.
    create_graph : bool
        Make the estimate differentiable (training); ``False`` returns a detached value.

    Returns
    -------
    Tensor
        The estimate, shape of the sample dimensions.
    """
    if n_exact_terms < 0 or not 0.0 < stop_probability <= 1.0 or n_probes < 1:
        raise ValueError(
            f"need n_exact_terms >= 0, 0 < stop_probability <= 1 and n_probes >= 1, got "
            f"{n_exact_terms}, {stop_probability}, {n_probes}"
        )
    if residual.shape != x.shape:
        raise ValueError(f"residual and x must have one shape, got {tuple(residual.shape)} and {tuple(x.shape)}")
    sample_dims = tuple(sorted(d % x.dim() for d in sample_dims))
    reduce_dims = tuple(d for d in range(x.dim()) if d not in sample_dims)
    sample_shape = [x.shape[d] for d in sample_dims]
    num_terms = n_exact_terms + int(torch.distributions.Geometric(probs=stop_probability).sample())
    survival = roulette_survival(num_terms, n_exact_terms, stop_probability).tolist()
    differentiate_series = create_graph and not neumann_gradient

    def vjp(vector: Tensor, graph: bool) -> Tensor:
        return torch.autograd.grad(residual, x, vector, retain_graph=True, create_graph=graph)[0]

    total = x.new_zeros(sample_shape)
    for _ in range(n_probes):
        probe = torch.randn_like(x)
        power = probe  # probe^T J^k
        estimate = x.new_zeros(sample_shape)  # stays zero when N = 0
        neumann = probe  # sum_k (-1)^k probe^T J^k / P(N >= k), from k = 0
        for k in range(1, num_terms + 1):
            power = vjp(power, differentiate_series)
            estimate = estimate + (-1) ** (k + 1) / k / survival[k] * (power * probe).sum(reduce_dims)
            neumann = neumann + (-1) ** k / survival[k] * power
        if create_graph and neumann_gradient:
            surrogate = (vjp(neumann.detach(), True) * probe).sum(reduce_dims)
            estimate = estimate.detach() + surrogate - surrogate.detach()
        total = total + estimate
    value = total / n_probes
    return value if create_graph else value.detach()
