"""The model follows ``.to(device)`` and dtype moves, and its hot path needs nothing from the graph's own package.

On this machine only the CPU is tested; the CUDA test runs where a GPU is visible (see
docs/performance.md for how it was run on one).
"""
from __future__ import annotations

import copy

import pytest
import torch

from dgl_iflow.graphs import GRAPH_FORMS, Graph
from dgl_iflow.layers import ChebConv, L3Conv
from dgl_iflow.transforms import GraphResidual
from dgl_iflow.models import IGNN
from graphs import cycle_graph

NUM_NODES = 6


def make_model(conv: str, logdet: str = "exact") -> IGNN:
    torch.manual_seed(0)
    return IGNN(cycle_graph(NUM_NODES, self_loops=True), feats=2, num_classes=2, conv=conv, num_blocks=3,
                hidden_feats=(16, 16), logdet=logdet, init_scale=0.5)


def batch(dtype=torch.float32, device="cpu", n=8):
    """``n`` samples, sample-first as the models take them: features ``(n, V, 2)``, labels ``(n, V)``."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, NUM_NODES, 2, generator=generator, dtype=torch.float64)
    y = (torch.rand(n, NUM_NODES, generator=generator) > 0.5).long()
    return x.to(device, dtype), y.to(device)


class RecordingGraph:
    """A graph form of its own, as a user could register one: answers structure queries and
    counts them; any other attribute fails the test."""

    def __init__(self, graph: Graph) -> None:
        self._graph = graph
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def num_nodes(self):
        self._count("num_nodes")
        return self._graph.num_nodes()

    def num_edges(self):
        self._count("num_edges")
        return self._graph.num_edges()

    def edges(self):
        self._count("edges")
        return self._graph.edges()

    def __getattr__(self, name: str):
        raise AssertionError(f"the hot path used graph.{name}")


class RecordingForm:
    name = "recording"

    def accepts(self, obj):
        return isinstance(obj, RecordingGraph)

    def anchor(self, obj):
        return obj

    def signature(self, obj):
        return obj.num_nodes(), obj.num_edges()

    def to_graph(self, obj):
        return Graph(*obj.edges(), obj.num_nodes())


def cached_operators(model: IGNN) -> list[torch.Tensor]:
    """The graph operators the convolutions hold after a forward (Chebyshev Laplacians)."""
    found = []
    for module in model.modules():
        if isinstance(module, ChebConv) and module._laplacian_memo._value is not None:
            found.append(module._laplacian_memo._value)
    return found


@pytest.mark.parametrize("conv", ["cheb", "l3", "mlp"])
def test_float64_move_gives_float64_outputs_that_agree_with_float32(conv):
    model32 = make_model(conv)
    model64 = copy.deepcopy(model32).to(torch.float64)
    x, y = batch()
    z32, logdet32, transport32 = model32.encode(model32.graph, x)
    z64, logdet64, transport64 = model64.encode(model64.graph, x.double())
    assert z64.dtype == logdet64.dtype == transport64.dtype == torch.float64
    assert z32.dtype == logdet32.dtype == torch.float32
    assert model64.dtype == torch.float64 and model32.dtype == torch.float32
    assert z64.shape == x.shape and logdet64.shape == transport64.shape == (len(x),)
    torch.testing.assert_close(z64.float(), z32, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logdet64.float(), logdet32, rtol=1e-4, atol=1e-4)
    # Training step and generation in float64 too.
    loss = model64.loss(model64.graph, x.double(), y)["loss"]
    assert loss.dtype == torch.float64
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float64 for p in model64.parameters())
    back = model64.generate(model64.graph, z64.detach(), tol=1e-12, max_iter=500)
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, x.double(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("conv", ["cheb", "l3"])
def test_operators_are_rebuilt_on_the_inputs_dtype(conv):
    model = make_model(conv)
    x, _ = batch()
    model.encode(model.graph, x)
    for operator in cached_operators(model):
        assert operator.dtype == torch.float32
    z32 = model.encode(model.graph, x)[0]
    model.to(torch.float64)
    z64 = model.encode(model.graph, x.double())[0]
    assert z64.dtype == torch.float64
    for operator in cached_operators(model):
        assert operator.dtype == torch.float64 and operator.device == x.device
    for conv_module in (m for m in model.modules() if isinstance(m, (ChebConv, L3Conv))):
        assert conv_module.basis_matrices(model.graph).dtype == torch.float64
    # ... and back: float32 again, same numbers as before the round trip.
    model.to(torch.float32)
    z_again = model.encode(model.graph, x)[0]
    assert z_again.dtype == torch.float32
    torch.testing.assert_close(z_again, z32, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z64.float(), z32, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv", ["cheb", "l3"])
@pytest.mark.parametrize("logdet", ["exact", "estimator"])
def test_hot_path_needs_only_the_graph_structure(conv, logdet, monkeypatch):
    """Forward, log-det, backward and inverse run on a graph form registered with one line,
    which only answers structure queries; after the first call (which converts the graph and
    builds the cached operators) not even the edges are read."""
    monkeypatch.setitem(GRAPH_FORMS, "recording", RecordingForm())
    model = make_model(conv, logdet)
    graph = RecordingGraph(model.graph)
    x, y = batch()
    model.loss(graph, x, y)["loss"].backward()  # warm-up: operators are built and cached
    graph.calls.clear()
    model.zero_grad()
    model.loss(graph, x, y)["loss"].backward()
    with torch.no_grad():
        z = model.encode(graph, x, logdet=False)[0]
        model.generate(graph, z)
    assert set(graph.calls) <= {"num_nodes", "num_edges"}, graph.calls


def test_residual_jacobian_follows_dtype():
    graph = cycle_graph(NUM_NODES, self_loops=True)
    residual = GraphResidual(ChebConv(2, 8, k=3), hidden_feats=(8,)).double()
    x = torch.randn(NUM_NODES, 4, 2, dtype=torch.float64)  # node-first, as the transforms take it
    out, jacobian = residual.forward_with_jacobian(graph, x)
    assert out.dtype == jacobian.dtype == torch.float64
    assert jacobian.shape == (4, 2 * NUM_NODES, 2 * NUM_NODES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("conv", ["cheb", "l3", "mlp"])
@pytest.mark.parametrize("logdet", ["exact", "estimator"])
def test_cuda_matches_cpu(conv, logdet):
    model = make_model(conv, logdet).double()
    on_gpu = copy.deepcopy(model).to("cuda")
    x, y = batch(torch.float64)
    torch.manual_seed(3)
    cpu_terms = model.loss(model.graph, x, y)
    torch.manual_seed(3)
    gpu_terms = on_gpu.loss(on_gpu.graph, x.cuda(), y.cuda())
    assert gpu_terms["loss"].device.type == "cuda"
    assert on_gpu.device.type == "cuda" and model.device.type == "cpu"
    samples = on_gpu.sample(on_gpu.graph, y[0].cuda(), 3)
    assert samples.device.type == "cuda" and samples.dtype == torch.float64 and samples.shape == (3, NUM_NODES, 2)
    for operator in cached_operators(on_gpu):
        assert operator.device.type == "cuda"
    if logdet == "exact":
        torch.testing.assert_close(gpu_terms["loss"].cpu(), cpu_terms["loss"], rtol=1e-9, atol=1e-9)
    gpu_terms["loss"].backward()
    cpu_terms["loss"].backward()
    if logdet == "exact":
        for p_cpu, p_gpu in zip(model.parameters(), on_gpu.parameters()):
            if p_cpu.grad is not None:
                torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        z = on_gpu.encode(on_gpu.graph, x.cuda(), logdet=False)[0]
        back = on_gpu.generate(on_gpu.graph, z, tol=1e-12, max_iter=500)
    torch.testing.assert_close(back.cpu(), x, rtol=0, atol=1e-9)
    # float32 on the GPU as well
    on_gpu.float()
    z32, logdet32, _ = on_gpu.encode(on_gpu.graph, x.float().cuda())
    assert z32.dtype == torch.float32 and z32.device.type == "cuda"
