"""Where the latent law used to live: kept so that ``dgl_iflow.models.latent`` imports still work.

The laws are in :mod:`dgl_iflow.latents`, one file each.
"""
from ..latents import LabelContextLatent, NodeGaussianLatent
from ..latents.gaussian import default_separation, gaussian_log_prob, spread_means
from ..latents.label_vector_gaussians import MAX_JOINT_DIM, PSEUDO_COUNTS

__all__ = ["MAX_JOINT_DIM", "PSEUDO_COUNTS", "LabelContextLatent", "NodeGaussianLatent", "default_separation",
           "gaussian_log_prob", "spread_means"]
