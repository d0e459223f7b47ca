r"""A discriminative head for node labels, or real-valued node targets, on a flow's features and latent.

The latent law predicts by Bayes' rule, :math:`P(Y \mid X) \propto q(F(X) \mid Y) P(Y)`: a
generative classifier, which on traffic stays below per-node logistic regression however the
law is shaped (``docs/reproduce.md``). :class:`LatentReadout` fits :math:`P(Y_v \mid X)`
directly, by per-node logistic regression on the sample's features and its latent together,

.. math::

    P(Y_v = k \mid X) = \operatorname{softmax}_k\big(W_v^\top [\operatorname{vec} X,\
        \operatorname{vec} F(X)] + b_v\big),

after training, on the training rows, with :class:`~dgl_iflow.baselines.NodeLogistic`'s
penalized objective. The flow and the latent law are left as they are, so densities, samples
and uncertainty sets do not change; :meth:`~dgl_iflow.models.base.FlowModel.predict_proba` uses
the head once it is fitted.

Real-valued targets get the same head with ridge regression in place of logistic regression,

.. math::

    \hat Y_v = W_v^\top [\operatorname{vec} X,\ \operatorname{vec} F(X)] + b_v,

its penalty chosen by exact leave-one-out error (:meth:`~dgl_iflow.baselines.NodeRidge.cross_validated`),
and the leave-one-out residuals' root mean square per node as its predictive scale:
:meth:`~dgl_iflow.models.base.FlowModel.predict` and
:meth:`~dgl_iflow.models.base.FlowModel.predict_interval` use them. The law's posterior mean
:math:`E[Y_v \mid H_v]` reads one node's latent through a fixed linear map; the head reads all
of them beside the features (``docs/continuous.md`` measures the difference).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..baselines import NodeLogistic, NodeRidge


#: The most weights (``V * 2 V d * K``, float64) a readout may have: it is quadratic in the
#: nodes, meant for graphs of tens to hundreds of nodes like the label context of the recipe.
MAX_READOUT_WEIGHTS = 50_000_000


def check_readout_size(num_nodes: int, feats: int, outputs: int) -> None:
    """Refuse, in one line, a readout too large to fit (:data:`MAX_READOUT_WEIGHTS`); ``outputs``
    is the number of classes, or of target coordinates per node."""
    weights = num_nodes * 2 * num_nodes * feats * outputs
    if weights > MAX_READOUT_WEIGHTS:
        raise ValueError(f"a readout on {num_nodes} nodes would have {weights:,} weights (at most "
                         f"{MAX_READOUT_WEIGHTS:,}): it reads every node's features for every node; "
                         "train without readout and predict by Bayes' rule in the latent")


class LatentReadout(nn.Module):
    """Per-node logistic or ridge regression on ``[vec X, vec F(X)]`` (module docstring); empty until
    :meth:`fit` or :meth:`fit_targets`.

    Its weights travel in the module's extra state, whose size depends on the data, so an
    unfitted head saves nothing and checkpoints from before it existed load.

    Attributes
    ----------
    weight : Tensor or None
        ``(V, 2 V d, K)`` float64 for ``K`` classes, ``(V, 2 V d, q)`` for ``q`` target
        coordinates per node, once fitted.
    bias : Tensor or None
        ``(V, K)`` or ``(V, q)`` float64, once fitted.
    scale : Tensor or None
        ``(V, q)`` float64 for targets: the root mean square of every coordinate's leave-one-out
        residual on the training rows; ``None`` for classes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.scale: Tensor | None = None
        self._register_load_state_dict_pre_hook(_unfitted_if_absent, with_module=True)

    @property
    def fitted(self) -> bool:
        return self.weight is not None

    @property
    def regression(self) -> bool:
        """Whether it was fitted to real-valued targets (:meth:`fit_targets`)."""
        return self.scale is not None

    @staticmethod
    def features(x: Tensor, h: Tensor) -> Tensor:
        """The head's input: ``[x, h]`` on every node, ``(N, V, 2 d)``; flattened by the regression."""
        return torch.cat([x, h], dim=-1)

    def fit(self, x: Tensor, h: Tensor, y: Tensor, num_classes: int, l2: float | None = None) -> LatentReadout:
        """Fit to training features ``x`` ``(N, V, d)``, their latents ``h`` (same shape) and labels ``y`` ``(N, V)``.

        ``l2`` as in :class:`~dgl_iflow.baselines.NodeLogistic` (default ``1 / N``).
        """
        check_readout_size(x.shape[1], x.shape[2], num_classes)
        regression = NodeLogistic(self.features(x, h).detach().cpu(), y.detach().cpu(), features="all",
                                  num_classes=num_classes, l2=l2)
        self.weight, self.bias, self.scale = regression.weight, regression.bias, None
        return self

    def fit_targets(self, x: Tensor, h: Tensor, y: Tensor) -> LatentReadout:
        """Fit to training features ``x`` ``(N, V, d)``, their latents ``h`` (same shape) and real-valued
        targets ``y`` ``(N, V, q)``: ridge regression, its penalty chosen by leave-one-out error."""
        num_nodes, q = y.shape[1:]
        check_readout_size(num_nodes, x.shape[2], q)
        regression = NodeRidge.cross_validated(self.features(x, h).detach().cpu(), y.detach().cpu())
        # NodeRidge's (2 V d, V q) map, one (2 V d, q) block per node.
        self.weight = regression.weight.reshape(-1, num_nodes, q).transpose(0, 1).contiguous()
        self.bias = regression.bias.reshape(num_nodes, q)
        self.scale = regression.loo_residuals.reshape(-1, num_nodes, q).pow(2).mean(0).sqrt()
        return self

    def clear(self) -> None:
        """Forget the fit (the flow it was fitted to has changed)."""
        self.weight = self.bias = self.scale = None

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """:math:`P(Y_v = k \\mid X)` ``(N, V, K)``, or the predicted targets ``(N, V, q)``, in ``x``'s dtype and device."""
        if not self.fitted:
            raise RuntimeError("the readout is not fitted: call FlowModel.fit_readout first")
        flat = self.features(x, h).flatten(1)
        weight, bias = self.weight.to(x.device, x.dtype), self.bias.to(x.device, x.dtype)
        linear = torch.einsum("nj,vjk->nvk", flat, weight) + bias
        return linear if self.regression else torch.softmax(linear, dim=-1)

    def get_extra_state(self) -> dict[str, Tensor]:
        if not self.fitted:
            return {}
        return dict(weight=self.weight, bias=self.bias, **({} if self.scale is None else dict(scale=self.scale)))

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.weight, self.bias, self.scale = state.get("weight"), state.get("bias"), state.get("scale")

    def extra_repr(self) -> str:
        if not self.fitted:
            return "unfitted"
        outputs = "targets" if self.regression else "classes"
        return f"nodes={self.weight.shape[0]}, inputs={self.weight.shape[1]}, {outputs}={self.weight.shape[2]}"


def _unfitted_if_absent(module: LatentReadout, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the head existed carry no state for it."""
    state_dict.setdefault(prefix + "_extra_state", {})
