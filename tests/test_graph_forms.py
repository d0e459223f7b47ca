"""One contract over every graph form: the same graph and weights give the same numbers (float64,
to rounding) whichever form they come in, through every layer, transform, model and trainer.

The forms are built with each package's own constructors (``dgl.graph``/``dgl.batch``, PyG's
``Data``/``Batch.from_data_list``), not with the library's converters, so that the adapters are
checked against the packages.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from dgl_iflow import IGNN, JKOFlow, JKOConfig, TrainConfig, fit, fit_jko
from dgl_iflow.graphs import Graph, as_graph, batch as batch_graphs, dgl_available
from dgl_iflow.layers import ChebConv, L3Conv, NodewiseConv, laplacian_lambda_max
from dgl_iflow.transforms import GraphMeanLinear
from graphs import toy_data
from test_contract import TRANSFORMS, V, D, B

HAS_PYG = importlib.util.find_spec("torch_geometric") is not None
FORMS = [
    "graph",
    "edge_index",
    pytest.param("dgl", marks=pytest.mark.skipif(not dgl_available(), reason="needs DGL itself: pip install 'dgl_iflow[dgl]'")),
    pytest.param("pyg", marks=pytest.mark.skipif(not HAS_PYG, reason="needs PyTorch Geometric: pip install 'dgl_iflow[pyg]'")),
]


def reference_graph(num_nodes: int = V, seed: int = 0, weighted: bool = True) -> Graph:
    """A cycle with self-loops and one chord, weights in [0.5, 1.5)."""
    src = torch.arange(num_nodes)
    dst = (src + 1) % num_nodes
    src, dst = torch.cat([src, dst, src, torch.tensor([0])]), torch.cat([dst, src, src, torch.tensor([num_nodes // 2])])
    weight = torch.rand(len(src), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    return Graph(src, dst, num_nodes, weight if weighted else None)


def in_form(graphs: list[Graph], form: str):
    """``graphs`` (batched when more than one) in ``form``, built by that form's own package."""
    if form == "graph":
        return graphs[0] if len(graphs) == 1 else batch_graphs(graphs)
    if form == "edge_index":
        assert len(graphs) == 1, "a plain edge_index carries no batch"
        g = graphs[0]
        return (g.edge_index, g.num_nodes()) if g.edge_weight is None else (g.edge_index, g.num_nodes(), g.edge_weight)
    if form == "dgl":
        import dgl

        parts = []
        for g in graphs:
            part = dgl.graph(g.edges(), num_nodes=g.num_nodes())
            if g.edge_weight is not None:
                part.edata["weight"] = g.edge_weight
            parts.append(part)
        return parts[0] if len(parts) == 1 else dgl.batch(parts)
    from torch_geometric.data import Batch, Data

    parts = [Data(edge_index=g.edge_index, num_nodes=g.num_nodes(),
                  **({} if g.edge_weight is None else {"edge_weight": g.edge_weight})) for g in graphs]
    return parts[0] if len(parts) == 1 else Batch.from_data_list(parts)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_the_door_keeps_nodes_edges_weights_and_batches(form):
    graphs = [reference_graph(), reference_graph(6, seed=1)]
    for parts in ([graphs[0]], graphs) if form != "edge_index" else ([graphs[0]],):
        converted, expected = as_graph(in_form(parts, form)), batch_graphs(parts)
        assert converted.num_nodes() == expected.num_nodes() and converted.batch_size == expected.batch_size
        assert torch.equal(converted.batch_num_nodes(), expected.batch_num_nodes())
        assert torch.equal(converted.edge_index, expected.edge_index)
        assert_same(converted.edge_weight, expected.edge_weight)


@pytest.mark.parametrize("form", FORMS)
def test_the_same_graph_object_converts_once_and_edits_are_seen(form):
    graph = in_form([reference_graph()], form)
    first = as_graph(graph)
    weight = first.edge_weight.clone()
    assert as_graph(graph) is first
    if form == "pyg":
        graph.edge_weight = graph.edge_weight * 2  # replaced on the object
    elif form == "dgl":
        graph.edata["weight"] = graph.edata["weight"] * 2
    elif form == "edge_index":
        graph[2].mul_(2)  # edited in place
    else:
        return  # a Graph is not edited after it is built
    assert as_graph(graph) is not first
    assert_same(as_graph(graph).edge_weight, 2 * weight)


@pytest.mark.parametrize("form", FORMS)
def test_layers_give_the_same_numbers(form):
    reference = reference_graph()
    graph = in_form([reference], form)
    x = torch.randn(V, B, D, dtype=torch.float64)
    torch.manual_seed(0)
    cheb = ChebConv(D, 3, k=3, graph_mean=True).double()
    assert_same(cheb(graph, x), cheb(reference, x))  # the graph's own weights
    assert_same(cheb(graph, x, 1.7), cheb(reference, x, 1.7))
    assert laplacian_lambda_max(graph) == pytest.approx(laplacian_lambda_max(reference), rel=1e-12)
    torch.manual_seed(0)
    built_on_form = L3Conv(D, 3, graph).double()
    torch.manual_seed(0)
    built_on_reference = L3Conv(D, 3, reference).double()
    assert_same(built_on_form(graph, x), built_on_reference(reference, x))
    assert_same(built_on_form(reference, x), built_on_reference(graph, x))
    nodewise = NodewiseConv(D, 3).double()
    assert_same(nodewise(graph, x), nodewise(reference, x))


@pytest.mark.parametrize("form", [f for f in FORMS if f != "edge_index"])
def test_batched_forms_give_each_graph_its_own_numbers(form):
    parts = [reference_graph(), reference_graph(6, seed=1)]
    reference = batch_graphs(parts)
    graph = in_form(parts, form)
    x = torch.randn(reference.num_nodes(), B, D, dtype=torch.float64)
    conv = ChebConv(D, 3, k=3, graph_mean=True).double()
    assert_same(conv(graph, x), conv(reference, x))
    mean_linear = GraphMeanLinear(D).double()
    mean_linear.initialize_from_data(graph, x)
    for a, b in zip(mean_linear(graph, x), mean_linear(reference, x)):
        assert_same(a, b)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("form", FORMS)
def test_transforms_give_the_same_numbers(form, name):
    reference = reference_graph()
    graph = in_form([reference], form)
    builder, _ = TRANSFORMS[name]
    torch.manual_seed(0)
    on_form = builder(graph).double().eval()
    torch.manual_seed(0)
    on_reference = builder(reference).double().eval()
    x = torch.randn(V, B, D, dtype=torch.float64)
    # Spectral normalization starts its power iteration from the global stream at the first call.
    torch.manual_seed(1)
    y, logdet = on_form(graph, x)
    torch.manual_seed(1)
    y_ref, logdet_ref = on_reference(reference, x)
    assert_same(y, y_ref)
    assert_same(logdet, logdet_ref)
    back, _ = on_form.inverse(graph, y, tol=1e-12, max_iter=500)
    back_ref, _ = on_reference.inverse(reference, y_ref, tol=1e-12, max_iter=500)
    assert_same(back, back_ref)


def small_ignn(graph, conv: str) -> IGNN:
    torch.manual_seed(0)
    return IGNN(graph, feats=2, num_classes=2, conv=conv, num_blocks=2, hidden_feats=(8,), graph_mean=True,
                graph_mean_linear=True).double()


@pytest.mark.parametrize("conv", ["cheb", "l3"])
@pytest.mark.parametrize("form", FORMS)
def test_ignn_trains_predicts_generates_and_saves_the_same(form, conv, tmp_path):
    reference = reference_graph(3, weighted=True)
    graph = in_form([reference], form)
    x, y = toy_data(48)
    x = x.double()
    config = TrainConfig(epochs=2, batch_size=16, lr=3e-3, seed=0, progress=False)
    models = {}
    for key, g in (("form", graph), ("reference", reference)):
        models[key] = small_ignn(g, conv)
        fit(models[key], g, x, y, config)
    model, expected = models["form"], models["reference"]
    for (name, p), (_, q) in zip(model.named_parameters(), expected.named_parameters()):
        assert_same(p, q)
    assert_same(model.log_prob(graph, x, y), expected.log_prob(reference, x, y))
    assert_same(model.predict_proba(graph, x), expected.predict_proba(reference, x))
    samples = model.sample(graph, y[0], n=4, generator=torch.Generator().manual_seed(1))
    assert_same(samples, expected.sample(reference, y[0], n=4, generator=torch.Generator().manual_seed(1)))
    model.save(tmp_path / "model.pt")
    restored = IGNN.load(tmp_path / "model.pt")
    assert_same(restored.log_prob(restored.graph, x, y), expected.log_prob(reference, x, y))


@pytest.mark.parametrize("form", FORMS)
def test_jko_flow_trains_and_scores_the_same(form):
    reference = reference_graph(3)
    graph = in_form([reference], form)
    x, _ = toy_data(32)
    x = x.double()
    config = JKOConfig(iterations=2, batch_size=16, max_blocks=1, seed=0, check_samples=4, progress=False)
    scores = []
    for g in (graph, reference):
        torch.manual_seed(0)
        model = JKOFlow(g, 2, conv="cheb", hidden_feats=(8,)).double()
        fit_jko(model, g, x, None, config)
        scores.append(model.log_prob(g, x))
    assert_same(*scores)


def test_conversions_are_forgotten_with_their_graphs():
    import gc

    from dgl_iflow import graphs

    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    graph = as_graph((edge_index, 3))
    assert any(entry[2] is graph for entry in graphs._converted.values())
    del edge_index
    gc.collect()
    assert not any(entry[2] is graph for entry in graphs._converted.values())


@pytest.mark.skipif(not HAS_PYG, reason="needs PyTorch Geometric: pip install 'dgl_iflow[pyg]'")
def test_a_pyg_batch_keeps_its_trailing_empty_graph():
    from torch_geometric.data import Batch, Data

    parts = [Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2), Data(edge_index=torch.zeros(2, 0, dtype=torch.long),
                                                                          num_nodes=0)]
    graph = as_graph(Batch.from_data_list(parts))
    assert graph.batch_size == 2 and graph.batch_num_nodes().tolist() == [2, 0]


@pytest.mark.skipif(not dgl_available(), reason="needs DGL itself: pip install 'dgl_iflow[dgl]'")
def test_dgl_weights_of_shape_e_by_1_are_read_as_e():
    import dgl

    g = dgl.graph(([0, 1], [1, 0]))
    g.edata["weight"] = torch.tensor([[0.5], [2.0]])
    assert as_graph(g).edge_weight.tolist() == [0.5, 2.0]


def test_learnable_graph_weights_get_a_gradient_at_every_step():
    reference = reference_graph()
    weight = reference.edge_weight.clone().requires_grad_()
    graph = (reference.edge_index, V, weight)
    conv = ChebConv(D, 3, k=3, lambda_max=2.0).double()
    x = torch.randn(V, B, D, dtype=torch.float64)
    for _ in range(2):
        weight.grad = None
        conv(graph, x).sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_edge_weights_given_where_lambda_max_goes_are_refused():
    reference = reference_graph()
    with pytest.raises(TypeError, match="lambda_max third"):
        ChebConv(D, 3, k=3).double()(reference, torch.randn(V, D, dtype=torch.float64), reference.edge_weight)


def test_a_model_on_a_batch_of_graphs_reloads_with_its_batch(tmp_path):
    graph = batch_graphs([reference_graph(3), reference_graph(3, seed=1)])
    torch.manual_seed(0)
    model = IGNN(graph, feats=2, num_classes=2, conv="cheb", num_blocks=1, hidden_feats=(8,), graph_mean=True).double()
    x, y = toy_data(8)
    x, y = torch.cat([x, x], 1).double(), torch.cat([y, y], 1)
    model.save(tmp_path / "model.pt")
    restored = IGNN.load(tmp_path / "model.pt")
    assert as_graph(restored.graph).batch_size == 2
    assert_same(restored.log_prob(restored.graph, x, y), model.log_prob(graph, x, y))
