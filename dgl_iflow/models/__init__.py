"""Models: an invertible transform of node features and a latent law given the labels."""
from .ignn import IGNN
from .jko import JKOFlow
from .latent import NodeGaussianLatent

__all__ = ["IGNN", "JKOFlow", "NodeGaussianLatent"]
