"""dgl_iflow: invertible graph neural networks on DGL and PyTorch."""
from . import _backend  # noqa: F401  (fails early, naming the supported torch/dgl pair)
from . import layers, metrics, transforms
from .models import IGNN, JKOFlow, NodeGaussianLatent
from .training import JKOConfig, TrainConfig, TrainHistory, fit, fit_jko

__version__ = "0.1.0"

__all__ = [
    "IGNN", "JKOConfig", "JKOFlow", "NodeGaussianLatent", "TrainConfig", "TrainHistory", "fit", "fit_jko", "layers",
    "metrics", "transforms",
]
