r"""Graph layers on node features of shape ``(V, *, D)``, graph first as in DGL, on a graph of any
form (a ``DGLGraph``, a PyTorch Geometric ``Data``, ``(edge_index, num_nodes)``, a
:class:`~dgl_iflow.graphs.Graph`).

The invertible blocks this library exists for, ready to drop into a DGL or PyG model:
:class:`InvertibleChebBlock` (spectral), :class:`InvertibleL3Block` (spatial, per-node filters),
any :class:`InvertibleResBlock` around a :class:`GraphResidual`, and :class:`GraphFlow`, their
composition with summed log-determinants. ``forward(graph, feat)`` returns the output and
:math:`\log|\det J|` per sample; ``inverse(graph, out)`` goes back. ``examples/`` shows a flow
head inside a DGL and inside a PyG model.

Their convolutions and activations: :class:`ChebConv`, :class:`L3Conv`, :class:`NodewiseConv`
(by name through :func:`make_conv`), and the 1-Lipschitz activations.
"""
from ..transforms.flow import GraphFlow
from ..transforms.resblock import InvertibleResBlock
from ..transforms.residual import GraphResidual
from .activations import ACTIVATIONS, ELU, Activation, LipSwish, Softplus, Tanh, make_activation
from .basis_conv import BasisConv
from .chebconv import ChebConv, laplacian_lambda_max
from .factory import CONVS, make_conv
from .invertible import InvertibleChebBlock, InvertibleL3Block
from .l3conv import L3Conv, khop_pairs
from .nodewise import NodewiseConv

__all__ = [
    "ACTIVATIONS", "CONVS", "Activation", "BasisConv", "ChebConv", "ELU", "GraphFlow", "GraphResidual",
    "InvertibleChebBlock", "InvertibleL3Block", "InvertibleResBlock", "L3Conv", "LipSwish", "NodewiseConv",
    "Softplus", "Tanh", "khop_pairs", "laplacian_lambda_max", "make_activation", "make_conv",
]
