"""Import DGL once, on its PyTorch backend, with an error that names the supported stack.

DGL picks its backend from ``$DGLBACKEND``, else ``~/.dgl/config.json``; with neither it prints
a banner, writes that file and assumes PyTorch. This library only works on PyTorch, so it sets
``DGLBACKEND=pytorch`` for this process when the user has not set the variable: no banner and
no file written into the user's home. A user's ``DGLBACKEND`` naming another backend is refused.
"""
from __future__ import annotations

import os
import sys

import torch

#: The ranges ``setup.cfg`` declares, and the exact stack ``constraints.txt`` pins and CI tests.
SUPPORTED_STACK = "dgl>=2.1 with torch>=2.1 and numpy<2"
TESTED_STACK = "dgl 2.1.0 with torch 2.2.1, torchdata 0.7.1 and numpy 1.26"


def _choose_pytorch_backend() -> None:
    chosen = os.environ.setdefault("DGLBACKEND", "pytorch")
    if chosen != "pytorch":
        raise ImportError(f"dgl_iflow needs DGL's PyTorch backend, but DGLBACKEND={chosen!r}; "
                          "unset it or set DGLBACKEND=pytorch")
    already = sys.modules.get("dgl.backend")
    if already is not None and already.backend_name != "pytorch":
        raise ImportError(f"dgl was imported with its {already.backend_name!r} backend before "
                          "dgl_iflow; dgl_iflow needs the PyTorch backend (DGLBACKEND=pytorch)")


_choose_pytorch_backend()

try:
    import dgl  # noqa: E402,F401  (re-exported for the rest of the package)
except Exception as err:  # graphbolt raises OSError/FileNotFoundError, torchdata ImportError
    raise ImportError(
        f"dgl_iflow supports {SUPPORTED_STACK} (tested: {TESTED_STACK}); importing dgl failed "
        f"under torch {torch.__version__}: {err!r}. A DGL wheel works only with the torch "
        "versions it was built for (PyPI's dgl 2.1.0: torch 2.0-2.2.1); install the DGL build "
        "for your torch from https://www.dgl.ai/pages/start.html, or the tested stack with "
        "`pip install -c constraints.txt -e .` (or `make test`)."
    ) from err
