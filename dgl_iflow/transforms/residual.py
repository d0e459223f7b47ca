"""The residual function of an invertible block: a graph convolution and node-wise layers."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graphs import GraphLike, as_graph
from ..layers.basis_conv import BasisConv
from . import spectral_norm
from .body import ConvMLP
from .jacobian import assemble_jacobian, conv_mlp_factors
from .logdet import JacobianVectorProduct


def _scaled(tensor: Tensor, scale: Tensor | float) -> Tensor:
    """``tensor * scale``, skipped (a pass over the tensor and an autograd node) for ``1.0``."""
    return tensor if isinstance(scale, float) and scale == 1.0 else tensor * scale


class GraphResidual(ConvMLP):
    r"""Residual function :math:`g` of an invertible block.

    .. math::
        g(X) = \sigma\big(\cdots \sigma\big(\mathrm{conv}(X)\big) W_1 + b_1 \cdots\big) W_L + b_L,

    a graph convolution from :math:`D` to :math:`H_0` channels followed by node-wise linear
    layers through ``hidden_feats`` back to :math:`D`, with a 1-Lipschitz activation after
    every layer but the last.

    The network is a :class:`~dgl_iflow.transforms.body.ConvMLP`, whose Jacobian factorizes:
    with :math:`M_v = \partial g_v / \partial z_v` (:math:`D \times H_0`, a product of weight
    matrices and activation derivatives), :math:`\partial g_v / \partial x_u = \sum_k
    (A_k)_{vu} M_v W_k^\top`. :meth:`forward_with_jacobian` builds it with a few large matrix
    products (:mod:`~dgl_iflow.transforms.jacobian`).

    Parameters
    ----------
    conv : BasisConv
        Graph convolution from :math:`D` to :math:`H_0` channels, without an activation of
        its own (the activations belong to this module).
    hidden_feats : sequence of int
        Widths of the node-wise hidden layers after the convolution.
    activation : str
        ``"lipswish"``, ``"elu"`` (both with a fused Jacobian kernel), ``"tanh"`` or
        ``"softplus"``: all 1-Lipschitz.
    lipschitz_coeff : float, optional
        Spectral normalization with coefficient :math:`c \in (0, 1)`: every layer (the
        convolution as a linear map on :math:`\mathbb{R}^{V \times D}`, and each node-wise
        linear layer) is scaled by :math:`\min(1, c / \hat\sigma)`, with :math:`\hat\sigma`
        its operator norm estimated by power iteration, so that
        :math:`\mathrm{Lip}(g) \le c` and the block is invertible by construction.
        Default: none (invertibility is then up to training, e.g. the transport cost).
    n_power_iterations : int
        Power-iteration steps per forward in training mode (with autograd on). The singular
        vectors persist between calls; when they are (re)started (first call, or a graph
        with another node count for the convolution) the iteration runs to convergence.
        In eval mode, without autograd, and during :meth:`InvertibleResBlock.inverse`, the
        vectors are frozen, so that :math:`g` is one fixed function. On a batched graph the
        convolution's norm is that of the whole batch, the largest of its graphs' norms, so
        with spectral normalization a graph's output can depend on its batch partners (each
        is scaled at least as much as alone, so invertibility holds).

    Notes
    -----
    Power iteration approaches :math:`\sigma` from below, so a layer's norm after scaling
    may exceed :math:`c` by the relative error of the estimate (below ``1e-6`` after a
    restart, and shrinking with every training step); with two layers or more, their
    product is anyway at most :math:`c^2`.
    """

    def __init__(
        self,
        conv: BasisConv,
        hidden_feats: Sequence[int] = (),
        activation: str = "lipswish",
        lipschitz_coeff: float | None = None,
        n_power_iterations: int = 1,
    ) -> None:
        if lipschitz_coeff is not None and not 0.0 < lipschitz_coeff < 1.0:
            raise ValueError(f"lipschitz_coeff must lie in (0, 1), got {lipschitz_coeff}")
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be positive, got {n_power_iterations}")
        super().__init__(conv, hidden_feats, activation)
        self.lipschitz_coeff = lipschitz_coeff
        self.n_power_iterations = n_power_iterations
        self._frozen = False
        if lipschitz_coeff is not None:
            for index, linear in enumerate(self.linears):
                out_feats, in_feats = linear.weight.shape
                self.register_buffer(f"_sn_left_{index}", torch.zeros(out_feats))
                self.register_buffer(f"_sn_right_{index}", torch.zeros(in_feats))
            # The convolution's vectors live on R^{V x C}: their size follows the graph, so they
            # travel in the extra state, which takes any size, rather than as fixed-size buffers.
            self.register_buffer("_sn_conv_left", torch.zeros(0, conv.out_feats), persistent=False)
            self.register_buffer("_sn_conv_right", torch.zeros(0, conv.in_feats), persistent=False)
            self._register_load_state_dict_pre_hook(_restart_without_saved_vectors, with_module=True)

    # ------------------------------------------------------------------ spectral normalization
    @contextmanager
    def frozen_normalization(self) -> Iterator[None]:
        """Within the block, the power iteration does not advance: :math:`g` stays fixed."""
        previous, self._frozen = self._frozen, True
        try:
            yield
        finally:
            self._frozen = previous

    def layer_scales(self, graph: GraphLike) -> tuple[Tensor | float, list[Tensor | float]]:
        r"""Factors :math:`\min(1, c / \hat\sigma)` of the convolution and of each linear layer.

        All ones without ``lipschitz_coeff``. Differentiable through :math:`\hat\sigma` (the
        singular vectors are constants), and advancing the power iteration in training mode.
        """
        graph = as_graph(graph)
        if self.lipschitz_coeff is None:
            return 1.0, [1.0] * len(self.linears)
        coeff = self.lipschitz_coeff
        steps = self.n_power_iterations if self.training and torch.is_grad_enabled() and not self._frozen else 0
        num_nodes, weight = graph.num_nodes(), self.conv.weight
        if self._sn_conv_right.shape[0] != num_nodes:
            # All zeros: the power iteration restarts on this graph size.
            self._sn_conv_left = weight.new_zeros(num_nodes, self.conv.out_feats)
            self._sn_conv_right = weight.new_zeros(num_nodes, self.conv.in_feats)
        conv_scale = spectral_norm.conv_scale(self.conv, graph, self._sn_conv_left, self._sn_conv_right, coeff, steps)
        linear_scales = [
            spectral_norm.linear_scale(linear.weight, getattr(self, f"_sn_left_{i}"), getattr(self, f"_sn_right_{i}"),
                                       coeff, steps)
            for i, linear in enumerate(self.linears)
        ]
        return conv_scale, linear_scales

    def get_extra_state(self) -> dict[str, Tensor]:
        """The convolution's singular vectors: a loaded model normalizes exactly as the saved one."""
        if self.lipschitz_coeff is None:
            return {}
        return {"conv_left": self._sn_conv_left, "conv_right": self._sn_conv_right}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        if self.lipschitz_coeff is None:
            return
        weight = self.conv.weight
        self._sn_conv_left = state.get("conv_left", weight.new_zeros(0, self.conv.out_feats)).to(weight.device)
        self._sn_conv_right = state.get("conv_right", weight.new_zeros(0, self.conv.in_feats)).to(weight.device)

    def lipschitz_bound(self, graph: GraphLike) -> float:
        r"""Upper bound :math:`\prod_l \|W_l\|_2` on :math:`\mathrm{Lip}(g)` with the current
        scaling, from norms computed exactly (dense SVD of the linear layers and of the
        convolution's ``(V C_{out}, V C_{in})`` matrix: for small graphs only)."""
        with torch.no_grad(), self.frozen_normalization():
            conv_scale, scales = self.layer_scales(graph)
            weights = [linear.weight for linear in self.linears]
            return spectral_norm.norm_product(self.conv, graph, conv_scale, weights, scales)

    # ------------------------------------------------------------------ evaluation
    def forward(self, graph: GraphLike, x: Tensor) -> Tensor:
        """:math:`g(X)` for ``x`` of shape ``(V, *, D)``; same shape out."""
        conv_scale, scales = self.layer_scales(graph)
        hidden = self.conv.add_bias(_scaled(self.conv.linear_part(graph, x), conv_scale))
        for activation, linear, scale in zip(self.activations, self.linears, scales):
            hidden = F.linear(activation(hidden), _scaled(linear.weight, scale), linear.bias)
        return hidden

    def forward_with_jacobian(self, graph: GraphLike, x: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`g(X)` and its Jacobian per sample.

        Parameters
        ----------
        x : Tensor
            Shape ``(V, *, D)``.

        Returns
        -------
        tuple of Tensor
            ``g(x)`` of shape ``(V, *, D)`` and the Jacobian of shape ``(*, V D, V D)`` with
            row index ``v D + i`` (output node, channel) and column ``u D + j``.
        """
        out, per_basis = self._factors(graph, x)
        jacobian = assemble_jacobian(per_basis, self.conv.operator_matrices(graph).to(x.dtype))
        size = x.shape[0] * x.shape[-1]
        return out.reshape(x.shape), jacobian.reshape(*x.shape[1:-1], size, size)

    def _factors(self, graph: GraphLike, x: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`g(X)` ``(V, B, D)`` and the factors :math:`P` ``(V, B, D, K, D)`` of
        :func:`~dgl_iflow.transforms.jacobian.conv_mlp_factors`, for ``x`` ``(V, *, D)``."""
        conv_scale, scales = self.layer_scales(graph)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        hidden = self.conv.add_bias(_scaled(self.conv.linear_part(graph, flat), conv_scale))
        return conv_mlp_factors(
            hidden, _scaled(self.conv.weight, conv_scale), self.activations,
            [_scaled(linear.weight, scale) for linear, scale in zip(self.linears, scales)],
            [linear.bias for linear in self.linears],
        )

    def forward_with_jvp(self, graph: GraphLike, x: Tensor) -> tuple[Tensor, JacobianVectorProduct]:
        r""":math:`g(X)` and the map :math:`v \mapsto J_g(X)\, v`, without the dense Jacobian.

        The products go through the factors of :func:`~dgl_iflow.transforms.jacobian.conv_mlp_factors`:
        :math:`(J v)_u = \sum_k P_{u,k} (A_k v)_u`, one pass of the convolution's operators
        over ``D`` channels and a ``D x K D`` product per node, at any graph size. Their
        gradients (through :math:`P`, the filters and :math:`X`) are first derivatives of
        those factors, whose second derivatives of the activations :class:`_NodeChain` has in
        closed form: no back-propagation through a backward pass.

        Parameters
        ----------
        x : Tensor
            Shape ``(V, *, D)``.

        Returns
        -------
        tuple
            ``g(x)`` of shape ``(V, *, D)``, and ``jvp(vector, differentiable)`` taking
            ``vector`` of that shape to :math:`J_g(x)\, v`, differentiable when asked to and
            autograd is on.
        """
        num_nodes, feats = x.shape[0], x.shape[-1]
        out, per_basis = self._factors(graph, x)
        rows = per_basis.shape[0] * per_basis.shape[1]
        # Rows last, (output channel, operator and channel) first: the product below then runs
        # over contiguous rows, about twice as fast as a batched matmul or einsum of the rows.
        columns = per_basis.reshape(rows, feats, -1).permute(1, 2, 0).contiguous()  # (D, K D, V B)

        def jvp(vector: Tensor, differentiable: bool) -> Tensor:
            if vector.shape != x.shape:
                raise ValueError(f"vector must have the input's shape {tuple(x.shape)}, got {tuple(vector.shape)}")
            with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
                factors = columns if differentiable else columns.detach()
                stacked = self.conv.operators(graph, vector.reshape(num_nodes, -1, feats))  # (K, V, B, D)
                per_row = stacked.permute(0, 3, 1, 2).reshape(-1, rows)  # (K D, V B)
                return (factors * per_row).sum(dim=1).T.reshape(x.shape)

        return out.reshape(x.shape), jvp

    def extra_repr(self) -> str:
        if self.lipschitz_coeff is None:
            return ""
        return f"lipschitz_coeff={self.lipschitz_coeff}, n_power_iterations={self.n_power_iterations}"


def _restart_without_saved_vectors(module: GraphResidual, state_dict: dict, prefix: str, *args) -> None:
    """State dicts written before the vectors were saved carry none: the power iteration restarts."""
    state_dict.setdefault(prefix + "_extra_state", {})
