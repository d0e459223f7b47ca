"""dgl_iflow: invertible graph neural networks on DGL, PyTorch Geometric or plain PyTorch graphs."""
from . import graphs, layers, metrics, transforms
from .models import IGNN, JKOFlow, NodeGaussianLatent
from .training import JKOConfig, TrainConfig, TrainHistory, fit, fit_jko

__version__ = "0.1.0"

__all__ = [
    "IGNN", "JKOConfig", "JKOFlow", "NodeGaussianLatent", "TrainConfig", "TrainHistory", "fit", "fit_jko", "graphs",
    "layers", "metrics", "transforms",
]
