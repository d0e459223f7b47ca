r"""A discriminative head for node labels on a flow's features and latent.

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
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..baselines import NodeLogistic


#: The most weights (``V * 2 V d * K``, float64) a readout may have: it is quadratic in the
#: nodes, meant for graphs of tens to hundreds of nodes like the label context of the recipe.
MAX_READOUT_WEIGHTS = 50_000_000


def check_readout_size(num_nodes: int, feats: int, num_classes: int) -> None:
    """Refuse, in one line, a readout too large to fit (:data:`MAX_READOUT_WEIGHTS`)."""
    weights = num_nodes * 2 * num_nodes * feats * num_classes
    if weights > MAX_READOUT_WEIGHTS:
        raise ValueError(f"a readout on {num_nodes} nodes would have {weights:,} weights (at most "
                         f"{MAX_READOUT_WEIGHTS:,}): it reads every node's features for every node; "
                         "train without readout and predict by Bayes' rule in the latent")


class LatentReadout(nn.Module):
    """Per-node logistic regression on ``[vec X, vec F(X)]`` (module docstring); empty until :meth:`fit`.

    Its weights travel in the module's extra state, whose size depends on the data, so an
    unfitted head saves nothing and checkpoints from before it existed load.

    Attributes
    ----------
    weight : Tensor or None
        ``(V, 2 V d, K)`` float64, once fitted.
    bias : Tensor or None
        ``(V, K)`` float64, once fitted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self._register_load_state_dict_pre_hook(_unfitted_if_absent, with_module=True)

    @property
    def fitted(self) -> bool:
        return self.weight is not None

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
        self.weight, self.bias = regression.weight, regression.bias
        return self

    def clear(self) -> None:
        """Forget the fit (the flow it was fitted to has changed)."""
        self.weight = self.bias = None

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """:math:`P(Y_v = k \\mid X)`, ``(N, V, K)`` in ``x``'s dtype and device."""
        if not self.fitted:
            raise RuntimeError("the readout is not fitted: call FlowModel.fit_readout first")
        flat = self.features(x, h).flatten(1)
        weight, bias = self.weight.to(x.device, x.dtype), self.bias.to(x.device, x.dtype)
        return torch.softmax(torch.einsum("nj,vjk->nvk", flat, weight) + bias, dim=-1)

    def get_extra_state(self) -> dict[str, Tensor]:
        return {} if not self.fitted else dict(weight=self.weight, bias=self.bias)

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.weight, self.bias = state.get("weight"), state.get("bias")

    def extra_repr(self) -> str:
        return "unfitted" if not self.fitted else f"nodes={self.weight.shape[0]}, inputs={self.weight.shape[1]}, " \
                                                  f"classes={self.weight.shape[2]}"


def _unfitted_if_absent(module: LatentReadout, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the head existed carry no state for it."""
    state_dict.setdefault(prefix + "_extra_state", {})
