"""Exact Jacobian of a graph convolution followed by node-wise layers.

:func:`conv_mlp_factors` (and :func:`assemble_jacobian`) serve
:class:`~dgl_iflow.transforms.residual.GraphResidual`. For
LipSwish and ELU, the activations whose formulas it hard-codes, the node-wise chain and its
Jacobian run in one autograd node with a hand-written backward (:class:`_NodeChain`,
``docs/performance.md``); any other activation goes through its ``value_and_derivative``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.activations import LIPSWISH_DIVISOR, Activation

#: Activations whose value and first two derivatives :class:`_NodeChain` has in closed form.
FUSED_KINDS = ("lipswish", "elu")


def conv_mlp_factors(
    hidden: Tensor,
    conv_weight: Tensor,
    activations: Sequence[Activation],
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
) -> tuple[Tensor, Tensor]:
    r"""Output of the node-wise chain and its Jacobian with respect to every operator's output.

    For :math:`X \mapsto \mathrm{chain}(\sum_k A_k X W_k + b)` the Jacobian factorizes as
    :math:`\partial\, \mathrm{out}_v / \partial x_u = \sum_k (A_k)_{vu} P_{v,k}`, where
    :math:`P_{v,k} = \partial\, \mathrm{out}_v / \partial (A_k X)_v` (``D x D`` per node and
    sample) involves no other node: a Jacobian-vector product is
    :math:`(J x)_v = \sum_k P_{v,k} (A_k x)_v`.

    Parameters
    ----------
    hidden : Tensor
        The convolution's output :math:`z_0`, shape ``(V, B, H_0)``.
    conv_weight : Tensor
        Its channel mixing :math:`W_k`, shape ``(K, D, H_0)``.
    activations, weights, biases : sequence
        The node-wise chain: ``activations[l]`` before the linear layer
        :math:`x \mapsto x W_l^\top + b_l`.

    Returns
    -------
    tuple of Tensor
        The chain's output ``(V, B, D)`` and :math:`P` ``(V, B, D, K, D)``: entry
        ``[v, b, i, k, j]`` is :math:`\partial\, \mathrm{out}_{v,b,i} / \partial (A_k x)_{v,b,j}`.
    """
    num_nodes, width = hidden.shape[0], hidden.shape[-1]
    num_bases, feats = conv_weight.shape[0], conv_weight.shape[1]
    wc = conv_weight.permute(2, 0, 1).reshape(width, -1)  # (H_0, K D), column (k, j)
    rows = hidden.reshape(-1, width)
    kinds = tuple(activation.kind for activation in activations)
    if all(kind in FUSED_KINDS for kind in kinds):
        betas = [activation.beta for activation in activations if activation.kind == "lipswish"]
        out, per_basis = _NodeChain.apply(rows, wc, kinds, *weights, *biases, *betas)
    else:
        out, per_basis = _chain(rows, wc, activations, weights, biases)
    return out.reshape(num_nodes, -1, feats), per_basis.reshape(num_nodes, -1, feats, num_bases, feats)


def assemble_jacobian(per_basis: Tensor, bases: Tensor) -> Tensor:
    r"""The dense Jacobian from the factors of :func:`conv_mlp_factors`.

    .. math::

        \frac{\partial\, \mathrm{out}_v}{\partial x_u} = \sum_k (A_k)_{vu} P_{v,k}

    Parameters
    ----------
    per_basis : Tensor
        :math:`P`, shape ``(V, B, D, K, D)``.
    bases : Tensor
        The node operators :math:`A_k`, dense ``(K, V, V)``.

    Returns
    -------
    Tensor
        ``(B, V D, V D)``: entry ``[b, v D + i, u D + j]`` is
        :math:`\partial\, \mathrm{out}_{v,b,i} / \partial x_{u,b,j}`.
    """
    num_nodes, feats, num_bases = per_basis.shape[0], per_basis.shape[2], per_basis.shape[3]
    # With the bases spread to spread[v, (k, j), (u, j')] = (A_k)_{vu} [j = j'], one bmm over
    # nodes gives the Jacobian rows of every node.
    eye = torch.eye(feats, dtype=bases.dtype, device=bases.device)
    spread = (bases.transpose(0, 1)[:, :, None, :, None] * eye[:, None, :]).reshape(num_nodes, num_bases * feats, -1)
    jacobian = torch.bmm(per_basis.reshape(num_nodes, -1, num_bases * feats), spread)  # (V, B D, V D)
    size = num_nodes * feats
    return jacobian.reshape(num_nodes, -1, feats, size).transpose(0, 1).reshape(-1, size, size)


def _chain(
    h0: Tensor, wc: Tensor, activations: Sequence[Activation],
    weights: Sequence[Tensor], biases: Sequence[Tensor | None],
) -> tuple[Tensor, Tensor]:
    """:class:`_NodeChain`'s outputs for any activations, differentiated by autograd."""
    h, derivatives = h0, []
    for activation, weight, bias in zip(activations, weights, biases):
        value, derivative = activation.value_and_derivative(h)
        derivatives.append(derivative)
        h = F.linear(value, weight, bias)
    # local[r, i, :] = d out_{r, i} / d h_l[r, :], from the last layer back to the first.
    local = weights[-1] * derivatives[-1].unsqueeze(-2)
    for layer in range(len(weights) - 2, -1, -1):
        local = (local @ weights[layer]) * derivatives[layer].unsqueeze(-2)
    return h, local @ wc


def _lipswish_terms(h: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``z = beta h``, ``s = sigmoid(z)`` and ``q = s (1 - s)``, from which LipSwish's value and
    first two derivatives are formed."""
    z = h * beta
    s = torch.sigmoid(z)
    return z, s, torch.addcmul(s, s, s, value=-1.0)


def _elu_derivative(h: Tensor) -> Tensor:
    return torch.exp(h.clamp(max=0.0))  # 1 above 0


def _phi(kind: str, h: Tensor, beta: Tensor | None) -> tuple[Tensor, Tensor]:
    r""":math:`\phi(h)` and :math:`\phi'(h)`, where :math:`\phi(h) = h\,\mathrm{sigmoid}(\beta h)`
    (LipSwish without its division by 1.1) or :math:`\mathrm{ELU}(h)`."""
    if kind == "lipswish":
        z, s, q = _lipswish_terms(h, beta)
        return h * s, torch.addcmul(s, z, q)  # s + z s (1 - s)
    return F.elu(h), _elu_derivative(h)


def _sum_over_outputs(left: Tensor, right: Tensor) -> Tensor:
    """``(left * right).sum(1)`` for ``(R, D, H)`` tensors, without the ``(R, D, H)`` product."""
    total = left[:, 0] * right[:, 0]
    for index in range(1, left.shape[1]):
        total.addcmul_(left[:, index], right[:, index])
    return total


class _NodeChain(torch.autograd.Function):
    r"""The node-wise layers after the convolution and their Jacobian, in one autograd node.

    Inputs: ``h0`` ``(R, H_0)`` (convolution output, rows are (node, sample) pairs), ``wc``
    ``(H_0, K D)`` (the convolution weights, column ``(k, j)``), the activation kinds, then the
    (scaled) weights ``W_l``, biases ``b_l`` and LipSwish slopes :math:`\beta_l`. Outputs:
    ``out`` ``(R, D)`` and ``P`` ``(R, D, K D)`` with
    :math:`P_r = W_{L-1} \operatorname{diag}(\sigma'_{L-1}) \cdots W_0 \operatorname{diag}(\sigma'_0) W_c`.

    The tensors of a block do not stay in cache, so an elementwise pass over an ``(R, H)``
    tensor costs a third to a half of an ``(R, H) x (H, H)`` matrix product
    (``docs/performance.md``), and the passes are kept few: LipSwish's division by 1.1 is
    folded into the next weight, derivatives are formed in place, and the first product of the
    chain, :math:`(W_{L-1} \operatorname{diag}(d_{L-1})) W_{L-2}`, is one matmul
    ``d_{L-1} @ M`` with :math:`M_{h,(i,h')} = (W_{L-1})_{ih} (W_{L-2})_{hh'}`. Backward is
    hand-written, with the activations' second derivatives in closed form; saved are only the
    pre-activations and the chain products (the sigmoids are recomputed: one pass each, and
    1.5 MB less per block of the paper's traffic configuration).
    """

    @staticmethod
    def forward(ctx, h0: Tensor, wc: Tensor, kinds: tuple[str, ...], *tensors: Tensor):
        num = len(kinds)
        weights, biases = tensors[:num], tensors[num:2 * num]
        beta_iter = iter(tensors[2 * num:])
        betas = [next(beta_iter) if kind == "lipswish" else None for kind in kinds]
        scaled = [w / LIPSWISH_DIVISOR if kind == "lipswish" else w for w, kind in zip(weights, kinds)]
        hs, derivatives = [], []
        h = h0
        for layer, kind in enumerate(kinds):
            hs.append(h)
            value, derivative = _phi(kind, h, betas[layer])
            derivatives.append(derivative)
            h = F.linear(value, scaled[layer], biases[layer])
        rows, feats = h.shape
        products = []  # U_l with local_l = U_l * d_l, for l = L-2 down to 0
        if num == 1:
            per_basis = (derivatives[0] @ _outer_mix(scaled[0], wc)).reshape(rows, feats, -1)
        else:
            product = (derivatives[-1] @ _outer_mix(scaled[-1], scaled[-2])).reshape(rows, feats, -1)
            products.append(product)
            local = product * derivatives[-2].unsqueeze(1)
            for layer in range(num - 3, -1, -1):
                product = local @ scaled[layer]
                products.append(product)
                local = product * derivatives[layer].unsqueeze(1)
            # Products with K D (about 6) columns are 4-7x faster in MKL with the narrow factor first.
            per_basis = (wc.T @ local.reshape(-1, local.shape[-1]).T).T.reshape(rows, feats, -1)
        products.reverse()  # products[l] = U_l
        ctx.kinds = kinds
        ctx.has_bias = [bias is not None for bias in biases]
        ctx.save_for_backward(
            wc, *scaled, *[b for b in betas if b is not None], *hs, *products,
        )
        return h, per_basis

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor | None, grad_per_basis: Tensor | None):
        kinds = ctx.kinds
        num = len(kinds)
        saved = iter(ctx.saved_tensors)
        wc = next(saved)
        scaled = [next(saved) for _ in range(num)]
        betas = [next(saved) if kind == "lipswish" else None for kind in kinds]
        hs = [next(saved) for _ in range(num)]
        products = list(saved)
        grad_scaled: list[Tensor | None] = [None] * num
        grad_derivatives: list[Tensor | None] = [None] * num
        grad_wc = None
        # Recomputed once per layer: z = beta h, s = sigmoid(z), q = s (1 - s) (LipSwish), phi'(h).
        terms = [
            (None, None, None) if kind == "elu" else _lipswish_terms(h, beta)
            for kind, h, beta in zip(kinds, hs, betas)
        ]
        zs, sigmoids, qs = (list(column) for column in zip(*terms))
        derivatives = [
            _elu_derivative(h) if kind == "elu" else torch.addcmul(s, z, q)
            for kind, h, s, z, q in zip(kinds, hs, sigmoids, zs, qs)
        ]
        if grad_per_basis is not None:
            rows = hs[0].shape[0]
            if num == 1:
                flat = grad_per_basis.reshape(rows, -1)
                grad_derivatives[0] = flat @ _outer_mix(scaled[0], wc).T
                grad_mixed = (derivatives[0].T @ flat).reshape(wc.shape[0], scaled[0].shape[0], -1)
                grad_scaled[0], grad_wc = _outer_mix_backward(grad_mixed, scaled[0], wc)
            else:
                local = products[0] * derivatives[0].unsqueeze(1)
                grad_wc = (grad_per_basis.reshape(-1, wc.shape[1]).T @ local.reshape(-1, local.shape[-1])).T  # narrow first
                grad_local = grad_per_basis @ wc.T
                for layer in range(num - 1):
                    grad_derivatives[layer] = _sum_over_outputs(grad_local, products[layer])
                    grad_product = grad_local.mul_(derivatives[layer].unsqueeze(1))
                    if layer < num - 2:
                        local_next = products[layer + 1] * derivatives[layer + 1].unsqueeze(1)
                        grad_scaled[layer] = local_next.reshape(-1, local_next.shape[-1]).T @ grad_product.reshape(-1, grad_product.shape[-1])
                        grad_local = grad_product @ scaled[layer].T
                    else:
                        flat = grad_product.reshape(rows, -1)
                        grad_derivatives[-1] = flat @ _outer_mix(scaled[-1], scaled[-2]).T
                        grad_mixed = (derivatives[-1].T @ flat).reshape(scaled[-2].shape[0], scaled[-1].shape[0], -1)
                        grad_scaled[-1], grad_scaled[-2] = _outer_mix_backward(grad_mixed, scaled[-1], scaled[-2])
        grad_biases: list[Tensor | None] = [None] * num
        grad_betas: list[Tensor | None] = [None] * num
        grad_h = grad_out
        for layer in range(num - 1, -1, -1):
            kind, h, s, derivative = kinds[layer], hs[layer], sigmoids[layer], derivatives[layer]
            grad_phi = None
            if grad_h is not None:
                value = h * s if kind == "lipswish" else F.elu(h)
                grad_weight = grad_h.T @ value
                grad_scaled[layer] = grad_weight if grad_scaled[layer] is None else grad_scaled[layer] + grad_weight
                if ctx.has_bias[layer]:
                    grad_biases[layer] = grad_h.sum(0)
                grad_phi = grad_h @ scaled[layer]
            grad_derivative = grad_derivatives[layer]
            grad_h = None
            if grad_phi is not None:
                if kind == "lipswish":
                    # phi(h) = h s has d/dbeta = h^2 q.
                    grad_betas[layer] = torch.dot((grad_phi * qs[layer]).mul_(h).flatten(), h.flatten())
                grad_h = grad_phi.mul_(derivative)
            if grad_derivative is not None and kind == "lipswish":
                # phi'(h) = s + z q has d/dh = beta m and d/dbeta = h m, m = q (2 + z (1 - 2 s)).
                z = zs[layer]
                weighted = torch.addcmul(z, z, s, value=-2.0).add_(2.0).mul_(qs[layer]).mul_(grad_derivative)
                term = torch.dot(weighted.flatten(), h.flatten())
                grad_betas[layer] = term if grad_betas[layer] is None else grad_betas[layer] + term
                grad_h = weighted.mul_(betas[layer]) if grad_h is None else grad_h.addcmul_(weighted, betas[layer])
            elif grad_derivative is not None:
                # ELU'' = ELU' = exp below 0, and 0 above.
                second = grad_derivative * derivative.masked_fill_(h > 0, 0.0)
                grad_h = second if grad_h is None else grad_h.add_(second)
        grad_weights = [
            None if grad is None else grad / LIPSWISH_DIVISOR if kind == "lipswish" else grad
            for grad, kind in zip(grad_scaled, kinds)
        ]
        grad_betas = [grad for grad, kind in zip(grad_betas, kinds) if kind == "lipswish"]
        return (grad_h, grad_wc, None, *grad_weights, *grad_biases, *grad_betas)


def _outer_mix(left: Tensor, right: Tensor) -> Tensor:
    """``M[h, (i, c)] = left[i, h] * right[h, c]`` of shape ``(H, I C)``, so that
    ``d @ M`` is ``(left * d[:, None, :]) @ right`` row by row."""
    return (left.T.unsqueeze(-1) * right.unsqueeze(1)).reshape(left.shape[1], -1)


def _outer_mix_backward(grad_mixed: Tensor, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``left`` and ``right`` from that of ``M`` shaped ``(H, I, C)``."""
    grad_left = (grad_mixed * right.unsqueeze(1)).sum(-1).T
    grad_right = (grad_mixed * left.T.unsqueeze(-1)).sum(1)
    return grad_left, grad_right
