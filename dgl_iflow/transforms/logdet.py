"""Log-determinants of :math:`I + J_g` for invertible residual blocks."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``jvp(vector, differentiable)``: :math:`J v` for a ``vector`` of the input's shape.
JacobianVectorProduct = Callable[[Tensor, bool], Tensor]


def exact_logdet(jacobian: Tensor) -> Tensor:
    r""":math:`\log |\det(I + J)|` for a batch of square Jacobians ``(*, n, n)``; shape ``(*,)``.

    On the CPU: Gauss-Jordan elimination vectorized over the batch (:class:`_GaussJordanLogdet`),
    which yields :math:`(I + J)^{-1}` on the way, and that inverse (transposed) is the gradient;
    differentiable once. On other devices: ``torch.linalg.slogdet``, whose batched LU kernels
    do not loop over the matrices there, while the elimination's :math:`n` steps of small
    kernels would be bound by launch latency.
    """
    if jacobian.dim() < 2 or jacobian.shape[-1] != jacobian.shape[-2]:
        raise ValueError(f"jacobian must have shape (*, n, n), got {tuple(jacobian.shape)}")
    if jacobian.device.type != "cpu":
        identity = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
        return torch.linalg.slogdet(identity + jacobian).logabsdet
    return _GaussJordanLogdet.apply(jacobian)


class _GaussJordanLogdet(torch.autograd.Function):
    r""":math:`\log|\det M|` with :math:`M = I + J`, by Gauss-Jordan elimination without pivoting.

    LAPACK's batched LU factors one small matrix at a time, and the gradient of ``slogdet``
    solves against the identity once more: for 200 matrices of 30 x 30 that costs 7.6 ms per
    block on the development CPU (``docs/performance.md``). Here each elimination step is one
    rank-1 update of the whole ``(n, n, B)`` stack: with pivot :math:`p = M_{kk}`, column
    :math:`a = M_{:k}` except :math:`a_k = p - 1`, and row :math:`b = M_{k:} / p` except
    :math:`b_k = 1 + 1/p`, the update :math:`M \leftarrow M - a b^\top` is the in-place
    Gauss-Jordan step, so after :math:`n` steps :math:`M^{-1}` is left in place. The log-det is
    :math:`\sum_k \log|p_k|` and its gradient is :math:`M^{-\top}`.

    Without pivoting the elimination needs nonzero leading principal minors, which holds when
    :math:`\mathrm{Lip}(g) < 1`: the symmetric part of :math:`M` is then positive definite, and
    so are those of its Schur complements. Samples with a pivot below
    :math:`\epsilon^{1/3}` in magnitude (error growth beyond :math:`\epsilon^{2/3}`) or a
    non-finite one are recomputed with LAPACK's pivoted LU.
    """

    @staticmethod
    def forward(ctx, jacobian: Tensor) -> Tensor:
        n = jacobian.shape[-1]
        batch_shape = jacobian.shape[:-2]
        flat = jacobian.reshape(-1, n, n)
        # Batch last: every step updates contiguous runs of B values.
        stack = flat.permute(1, 2, 0).contiguous()
        diagonal = stack.diagonal(dim1=0, dim2=1)  # (B, n)
        diagonal.add_(1.0)
        inverse_pivots = stack.new_empty(n, stack.shape[-1])
        units = torch.eye(n, dtype=stack.dtype, device=stack.device).unsqueeze(-1).unbind(0)  # e_k, (n, 1)
        columns, rows, diagonals = stack.unbind(1), stack.unbind(0), diagonal.unbind(1)
        for k, inverse_pivot in enumerate(inverse_pivots.unbind(0)):
            torch.reciprocal(diagonals[k], out=inverse_pivot)
            left = columns[k] - units[k]
            right = torch.add(rows[k], units[k]).mul_(inverse_pivot)
            stack.addcmul_(left.unsqueeze(1), right.unsqueeze(0), value=-1.0)
        magnitudes = inverse_pivots.abs()
        logabsdet = -magnitudes.log().sum(0)
        inverse = stack.permute(2, 0, 1)
        unreliable = ~(magnitudes.amax(0) <= torch.finfo(flat.dtype).eps ** (-1 / 3))
        if bool(unreliable.any()):
            retry = flat[unreliable] + torch.eye(n, dtype=flat.dtype, device=flat.device)
            logabsdet[unreliable] = torch.linalg.slogdet(retry).logabsdet
            inverse = inverse.clone()
            inverse[unreliable] = torch.linalg.inv_ex(retry).inverse
        ctx.save_for_backward(inverse)
        ctx.batch_shape = batch_shape
        return logabsdet.reshape(batch_shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (inverse,) = ctx.saved_tensors
        n = inverse.shape[-1]
        return (grad.reshape(-1, 1, 1) * inverse.transpose(1, 2)).reshape(*ctx.batch_shape, n, n)


def roulette_survival(num_terms: int, n_exact_terms: int, stop_probability: float) -> Tensor:
    r""":math:`P(N \ge k)` for :math:`k = 0, \dots,` ``num_terms``, where
    :math:`N = n_{exact} + G` and :math:`G` is geometric: :math:`P(G \ge j) = (1 - p)^j`."""
    k = torch.arange(num_terms + 1, dtype=torch.float64)
    return (1.0 - stop_probability) ** (k - n_exact_terms).clamp(min=0)


def power_series_logdet(
    jvp: JacobianVectorProduct,
    like: Tensor,
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
    unbiased Neumann-series estimate (:math:`\operatorname{tr}((I + J)^{-1} \nabla J) =
    \operatorname{tr}(\nabla J\, (I + J)^{-1})`)

    .. math::
        \nabla \log\det(I + J) = \mathbb{E}\left[v^\top (\nabla J)
        \Big(\sum_{k=0}^{N} \frac{(-1)^k}{P(N \ge k)} J^k v\Big)\right],

    which differentiates one Jacobian-vector product instead of all :math:`N` of them;
    otherwise the series itself is differentiated.

    Parameters
    ----------
    jvp : callable
        ``jvp(vector, differentiable)``: :math:`J_g(x)\, v` for ``vector`` of the shape of
        ``like``, differentiable (with respect to whatever the log-det's gradient should reach)
        when ``differentiable`` is true, e.g. the second output of
        :meth:`~dgl_iflow.transforms.residual.GraphResidual.forward_with_jvp`.
    like : Tensor
        A tensor of the input's shape, dtype and device: the probes are drawn like it.
    sample_dims : tuple of int
        Dimensions of ``like`` that index samples; the rest are summed in the trace.
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
    sample_dims = tuple(sorted(d % like.dim() for d in sample_dims))
    reduce_dims = tuple(d for d in range(like.dim()) if d not in sample_dims)
    sample_shape = [like.shape[d] for d in sample_dims]
    num_terms = n_exact_terms + int(torch.distributions.Geometric(probs=stop_probability).sample())
    survival = roulette_survival(num_terms, n_exact_terms, stop_probability).tolist()
    differentiate_series = create_graph and not neumann_gradient

    def product(vector: Tensor, differentiable: bool) -> Tensor:
        out = jvp(vector, differentiable)
        if out.shape != like.shape:
            raise ValueError(f"jvp must keep the shape {tuple(like.shape)}, got {tuple(out.shape)}")
        return out

    total = like.new_zeros(sample_shape)
    for _ in range(n_probes):
        probe = torch.randn_like(like)
        power = probe  # J^k probe
        estimate = like.new_zeros(sample_shape)  # stays zero when N = 0
        neumann = probe  # sum_k (-1)^k J^k probe / P(N >= k), from k = 0
        for k in range(1, num_terms + 1):
            power = product(power, differentiate_series)
            estimate = estimate + (-1) ** (k + 1) / k / survival[k] * (power * probe).sum(reduce_dims)
            neumann = neumann + (-1) ** k / survival[k] * power
        if create_graph and neumann_gradient:
            surrogate = (product(neumann.detach(), True) * probe).sum(reduce_dims)
            estimate = estimate.detach() + surrogate - surrogate.detach()
        total = total + estimate
    value = total / n_probes
    return value if create_graph else value.detach()
