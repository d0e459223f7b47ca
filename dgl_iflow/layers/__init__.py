"""Invertible graph layers: drop-in DGL modules on node features of shape ``(V, *, D)``."""
from .activations import ELU, LipSwish
from .basis_conv import BasisConv
from .chebconv import ChebConv, laplacian_lambda_max
from .flow import FlowOutput, GraphFlow
from .l3conv import L3Conv, khop_pairs
from .node_affine import NodeAffine
from .logdet import exact_logdet, power_series_logdet
from .residual import GraphResidual
from .resblock import InversionError, InversionWarning, InvertibleResBlock

__all__ = [
    "BasisConv", "ChebConv", "ELU", "FlowOutput", "GraphFlow", "GraphResidual", "InversionError",
    "InversionWarning", "InvertibleResBlock", "L3Conv", "LipSwish", "NodeAffine", "exact_logdet", "khop_pairs",
    "laplacian_lambda_max", "power_series_logdet",
]
