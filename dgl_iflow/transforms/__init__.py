"""Invertible transforms of graph node features ``(V, *, D)``, and their composition."""
from .base import GraphTransform, InversionError, InversionWarning
from .body import ConvMLP
from .divergence import autograd_divergence, hutchinson_divergence, make_probes
from .flow import FlowOutput, GraphFlow
from .graph_mean_linear import GraphMeanLinear
from .logdet import exact_logdet, power_series_logdet
from .node_affine import NodeAffine
from .ode_block import DIVERGENCES, JKOBlock
from .resblock import InvertibleResBlock
from .residual import GraphResidual
from .velocity import FieldSpec, GraphVelocityField

__all__ = [
    "DIVERGENCES", "ConvMLP", "FieldSpec", "FlowOutput", "GraphFlow", "GraphMeanLinear", "GraphResidual",
    "GraphTransform", "GraphVelocityField", "InversionError", "InversionWarning", "InvertibleResBlock", "JKOBlock",
    "NodeAffine", "autograd_divergence", "exact_logdet", "hutchinson_divergence", "make_probes", "power_series_logdet",
]
