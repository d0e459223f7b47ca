"""JKO-iFlow: continuous-time flow blocks on graph node features, trained one JKO step at a time.

Each block is the flow map of an ODE :math:`\\dot x = f_\\theta(x, t)` over one time interval,
trained to take one step of the JKO scheme towards the latent Gaussian with the earlier blocks
frozen (Xu, Cheng, Xie, "Normalizing flow neural networks by JKO scheme", 2023)::

    from dgl_iflow.jko import JKOConfig, JKOFlow, fit_jko
    model = JKOFlow(data.graph, feats=2, num_classes=data.num_classes, conv="l3")
    history = fit_jko(model, *data.split("train"), JKOConfig(reparametrize_rounds=1))

See ``docs/jko.md``.
"""
from .block import DIVERGENCES, JKOBlock
from .divergence import autograd_divergence, hutchinson_divergence, make_probes
from .field import FieldSpec, GraphVelocityField, NodewiseConv, basis_diagonals
from .model import JKOFlow
from .schedule import refine, reparametrize, reparametrized_steps, step_size
from .trainer import BlockRecord, JKOConfig, JKOHistory, JKOTrainer, SavedTensorMeter, block_objective, fit_jko

__all__ = [
    "DIVERGENCES", "BlockRecord", "FieldSpec", "GraphVelocityField", "JKOBlock", "JKOConfig", "JKOFlow",
    "JKOHistory", "JKOTrainer", "NodewiseConv", "SavedTensorMeter", "autograd_divergence", "basis_diagonals",
    "block_objective", "fit_jko", "hutchinson_divergence", "make_probes", "refine", "reparametrize",
    "reparametrized_steps", "step_size",
]
