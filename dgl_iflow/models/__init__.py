"""Models: an invertible transform of node features and a latent law given the labels."""
from .base import FlowModel
from .ignn import IGNN
from .jko import JKOFlow
from ..latents import NodeGaussianLatent

__all__ = ["FlowModel", "IGNN", "JKOFlow", "NodeGaussianLatent"]
