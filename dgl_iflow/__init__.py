"""dgl_iflow: invertible graph neural networks on DGL and PyTorch."""
from . import _backend  # noqa: F401  (fails early with the supported torch/dgl pair)
from . import layers

__version__ = "0.1.0"
