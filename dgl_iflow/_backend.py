"""Import DGL once, with an error that names the torch/dgl pair this library is pinned to."""
from __future__ import annotations

import torch

SUPPORTED_STACK = "dgl==2.1.0 with torch==2.2.1, torchdata==0.7.1 and numpy<2"

try:
    import dgl  # noqa: F401  (re-exported for the rest of the package)
except Exception as err:  # graphbolt raises OSError/FileNotFoundError, torchdata ImportError
    raise ImportError(
        f"dgl_iflow needs {SUPPORTED_STACK}; importing dgl failed under torch "
        f"{torch.__version__}: {err!r}. dgl 2.1.0 ships its compiled graphbolt library only "
        "for torch <= 2.2.1. Install the pinned stack with `pip install -e .` (or `make test`)."
    ) from err
