"""A data set's own units: the per-node standardization the real data sets apply, and its inverse.

The real data sets (``traffic``, ``solar``) and data sets read with
:func:`~dgl_iflow.data.user.load_graph_data` standardize their features with statistics of the
training part, and record them in ``info["scaler"]``: ``mean`` and ``std`` per node ``(V,)``,
shared by all features of a node, or per node and feature ``(V, d)``. Models train and generate
in those standardized units; :func:`to_data_units` takes generated samples back to the data's.
The generated data sets are not standardized: their units are the data's own.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import GraphDataset

__all__ = ["feature_scale", "to_data_units", "to_standardized"]


def feature_scale(dataset: GraphDataset) -> tuple[Tensor, Tensor] | None:
    """``(mean, std)`` of the data set's standardization, each ``(V, d)`` float64; ``None`` if it has none.

    Standardized features are ``(x - mean) / std``, so ``x = standardized * std + mean``.
    """
    scaler = dataset.info.get("scaler")
    if not scaler:
        return None
    shape = (dataset.num_nodes, dataset.num_features)
    parts = []
    for key in ("mean", "std"):
        value = torch.as_tensor(scaler[key], dtype=torch.float64)
        if value.shape == shape[:1]:  # one statistic per node, shared by its features (both lags)
            value = value.unsqueeze(-1)
        parts.append(value.expand(shape).clone())
    return parts[0], parts[1]


def to_data_units(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Standardized features ``(*, V, d)`` in the data's own units: ``x * std + mean``, in ``x``'s dtype."""
    return (x.to(torch.float64) * std + mean).to(x.dtype)


def to_standardized(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """The inverse of :func:`to_data_units`: ``(x - mean) / std``, in ``x``'s dtype."""
    return ((x.to(torch.float64) - mean) / std).to(x.dtype)
