"""Graph convolutions and activations: DGL modules on node features of shape ``(V, *, D)``."""
from .activations import ELU, LipSwish
from .basis_conv import BasisConv
from .chebconv import ChebConv, laplacian_lambda_max
from .l3conv import L3Conv, khop_pairs

__all__ = ["BasisConv", "ChebConv", "ELU", "L3Conv", "LipSwish", "khop_pairs", "laplacian_lambda_max"]
