"""The drop-in examples: a flow head from dgl_iflow.layers inside a user's DGL model and inside a
user's PyG model trains, beats a Gaussian blind to the graph, and inverts."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from graphs import requires_dgl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HAS_PYG = importlib.util.find_spec("torch_geometric") is not None


def run_example(name: str) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(steps=300)


@pytest.mark.parametrize("name", [
    pytest.param("dgl_flow_head", marks=requires_dgl),
    pytest.param("pyg_flow_head", marks=pytest.mark.skipif(not HAS_PYG, reason="needs PyTorch Geometric: pip install 'dgl_iflow[pyg]'")),
])
def test_flow_head_example(name):
    result = run_example(name)
    assert result["nll_after"] < result["nll_before"] - 10
    # The noise is correlated along the ring: the flow must find it.
    assert result["nll_after"] < result["independent_gaussian_nll"] - 2, result
    assert result["round_trip_error"] < 1e-3
    assert result["sample_mean_error"] < 0.5
