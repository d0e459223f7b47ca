"""dgl_iflow: invertible graph neural networks on DGL and PyTorch."""
from . import _backend  # noqa: F401  (fails early, naming the supported torch/dgl pair)
from . import layers, metrics
from .latent import NodeGaussianLatent
from .model import IGNN
from .training import TrainConfig, TrainHistory, fit

__version__ = "0.1.0"

__all__ = ["IGNN", "NodeGaussianLatent", "TrainConfig", "TrainHistory", "fit", "layers", "metrics"]
