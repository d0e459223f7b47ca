"""The examples in the docstrings of the layers, transforms, graphs, latent laws and conformal tools run and print what they show."""
import doctest
import importlib
import pkgutil

import pytest

import dgl_iflow.graphs
import dgl_iflow.latents
import dgl_iflow.layers
import dgl_iflow.transforms

MODULES = sorted(
    [f"{package.__name__}.{info.name}"
     for package in (dgl_iflow.graphs, dgl_iflow.latents, dgl_iflow.layers, dgl_iflow.transforms)
     for info in pkgutil.iter_modules(package.__path__)]
    + ["dgl_iflow.conformal", "dgl_iflow.recipe"]
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
