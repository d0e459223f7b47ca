"""Features and labels as users hold them (tensors of any dtype, NumPy arrays, lists), converted
once at the public boundary of the models and trainers."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def _tensor(values: Any, name: str) -> Tensor:
    if isinstance(values, Tensor):
        return values
    try:
        array = np.asarray(values)
    except ValueError:  # NumPy's word for ragged nested lists
        raise TypeError(f"{name} must be rectangular: its nested lists have different lengths") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be a tensor, a NumPy array or nested lists of numbers, got a "
                        f"{type(values).__name__} of {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


def as_features(values: Any, dtype: torch.dtype, device: torch.device, name: str = "x") -> Tensor:
    """``values`` as a float tensor of ``dtype`` on ``device``: a tensor of any dtype, a NumPy
    array or nested lists; ``TypeError`` in one line for anything else."""
    tensor = _tensor(values, name)
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got {tensor.dtype}")
    return tensor.to(device=device, dtype=dtype)


def as_labels(values: Any, device: torch.device, name: str = "y") -> Tensor:
    """``values`` as an int64 tensor on ``device``: integers of any width, or floats that are all
    whole numbers; ``ValueError`` in one line for fractional or non-finite ones."""
    tensor = _tensor(values, name)
    if tensor.is_floating_point() or tensor.is_complex():
        if tensor.is_complex() or not bool(torch.isfinite(tensor).all()) or not bool((tensor == tensor.round()).all()):
            raise ValueError(f"{name} must hold whole-number labels, got {tensor.dtype} values that are not "
                             "(fractions, NaN or infinity)")
    return tensor.to(device=device, dtype=torch.int64)
