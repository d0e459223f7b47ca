"""Graph convolutions and activations: DGL modules on node features of shape ``(V, *, D)``."""
from .activations import ACTIVATIONS, ELU, Activation, LipSwish, Softplus, Tanh, make_activation
from .basis_conv import BasisConv
from .chebconv import ChebConv, laplacian_lambda_max
from .factory import CONVS, make_conv
from .l3conv import L3Conv, khop_pairs
from .nodewise import NodewiseConv

__all__ = [
    "ACTIVATIONS", "CONVS", "Activation", "BasisConv", "ChebConv", "ELU", "L3Conv", "LipSwish", "NodewiseConv",
    "Softplus", "Tanh", "khop_pairs", "laplacian_lambda_max", "make_activation", "make_conv",
]
