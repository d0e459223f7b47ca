"""Batched graphs (``dgl.batch``): every layer gives each graph the output it gives it alone."""
import numpy as np
import pytest
import torch

from dgl_iflow.graphs import Graph, batch as batch_graphs, to_dgl
from dgl_iflow.layers import ChebConv, L3Conv, laplacian_lambda_max
from dgl_iflow.transforms import GraphFlow, GraphResidual, InvertibleResBlock
from dgl_iflow.layers.graph_operator import DENSE_MAX_NODES
from graphs import make_graph, path_graph, random_graph, requires_dgl
from test_chebconv import dense_chebconv


def three_graphs(large: bool = False) -> list[Graph]:
    """Graphs with different spectra: lambda_max differs between them, so a shared one would show."""
    triangle = make_graph(([0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]))
    return [path_graph(), triangle, random_graph(DENSE_MAX_NODES + 10 if large else 9, 3.0, seed=2)]


def split_nodes(out: torch.Tensor, graphs: list[Graph]) -> list[torch.Tensor]:
    return list(out.split([g.num_nodes() for g in graphs]))


def features(graphs: list[Graph], *shape: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(g.num_nodes(), *shape, dtype=torch.float64, generator=generator) for g in graphs]


def cheb(k: int = 4, **kwargs) -> ChebConv:
    torch.manual_seed(0)
    conv = ChebConv(2, 3, k=k, **kwargs).double()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


@requires_dgl
@pytest.mark.parametrize("large", [False, True])  # dense and sparse operators
def test_lambda_max_per_graph_matches_dgl(large):
    import dgl

    graphs = three_graphs(large)
    batch = batch_graphs(graphs)
    expected = dgl.laplacian_lambda_max(to_dgl(batch))
    assert laplacian_lambda_max(batch) == pytest.approx(expected, rel=1e-6)
    assert len(set(np.round(expected, 3))) == 3, "the graphs must have different lambda_max"
    assert laplacian_lambda_max(batch) == pytest.approx(
        [value for g in graphs for value in laplacian_lambda_max(g)], rel=1e-9)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_chebconv_on_a_batch_equals_per_graph_calls(large, weighted):
    graphs = three_graphs(large)
    batch = batch_graphs(graphs)
    x = features(graphs, 4, 2)
    generator = torch.Generator().manual_seed(1)
    weights = [torch.rand(g.num_edges(), dtype=torch.float64, generator=generator) + 0.1 if weighted else None
               for g in graphs]
    conv = cheb()
    batched = conv(batch, torch.cat(x), edge_weight=torch.cat(weights) if weighted else None)
    for part, graph, feat, weight in zip(split_nodes(batched, graphs), graphs, x, weights):
        alone = conv(graph, feat, edge_weight=weight)
        torch.testing.assert_close(part, alone, rtol=1e-9, atol=1e-9)
        # Brute force: the dense Chebyshev polynomial of this graph's own scaled Laplacian.
        np.testing.assert_allclose(part.detach().numpy(), dense_chebconv(conv, graph, feat, weight),
                                   rtol=1e-7, atol=1e-7)


def test_chebconv_with_graph_mean_on_a_batch_equals_per_graph_calls():
    graphs = three_graphs()
    x = features(graphs, 4, 2)
    conv = cheb(graph_mean=True)
    batched = conv(batch_graphs(graphs), torch.cat(x))
    for part, graph, feat in zip(split_nodes(batched, graphs), graphs, x):
        torch.testing.assert_close(part, conv(graph, feat), rtol=1e-9, atol=1e-9)


def test_chebconv_does_not_depend_on_batch_partners():
    graphs = three_graphs()
    x = features(graphs, 2)
    conv = cheb()
    with_star = split_nodes(conv(batch_graphs(graphs[:2]), torch.cat(x[:2])), graphs[:2])[0]
    with_random = split_nodes(conv(batch_graphs([graphs[0], graphs[2]]), torch.cat([x[0], x[2]])),
                              [graphs[0], graphs[2]])[0]
    torch.testing.assert_close(with_star, with_random, rtol=1e-12, atol=1e-12)


def test_given_lambda_max_per_graph_or_shared():
    graphs = three_graphs()
    batch = batch_graphs(graphs)
    x = features(graphs, 2)
    given = [1.5, 1.8, 1.9]
    batched = cheb(lambda_max=given)(batch, torch.cat(x))
    for part, graph, feat, value in zip(split_nodes(batched, graphs), graphs, x, given):
        np.testing.assert_allclose(part.detach().numpy(),
                                   dense_chebconv(cheb(), graph, feat, lambda_max=value), rtol=1e-7, atol=1e-7)
    shared = cheb(lambda_max=2.0)(batch, torch.cat(x))
    for part, graph, feat in zip(split_nodes(shared, graphs), graphs, x):
        torch.testing.assert_close(part, cheb(lambda_max=2.0)(graph, feat))
    with pytest.raises(ValueError, match="lambda_max gives 2 values, but the graph is a batch of 3"):
        cheb(lambda_max=[1.5, 1.8])(batch, torch.cat(x))
    with pytest.raises(ValueError, match="lambda_max must be positive"):
        ChebConv(2, 3, k=2, lambda_max=[1.0, 0.0])


def test_residual_block_and_flow_on_a_batch_equal_per_graph_calls():
    graphs = three_graphs()
    batch = batch_graphs(graphs)
    torch.manual_seed(0)

    def block() -> InvertibleResBlock:
        residual = GraphResidual(ChebConv(2, 8, k=3), hidden_feats=[8])
        with torch.no_grad():  # small enough to be contractive, so the inverse converges
            for linear in residual.linears:
                linear.weight.mul_(0.3)
        return InvertibleResBlock(residual, logdet="exact")

    flow = GraphFlow([block(), block()]).double()
    x = features(graphs, 5, 2)
    out = flow.forward_with_transport(batch, torch.cat(x))
    logdet_sum = 0
    for part, graph, feat in zip(split_nodes(out.z, graphs), graphs, x):
        alone = flow.forward_with_transport(graph, feat)
        torch.testing.assert_close(part, alone.z, rtol=1e-9, atol=1e-9)
        logdet_sum = logdet_sum + alone.logdet
    # The Jacobian of the batch is block diagonal: its log-det is the sum over graphs.
    torch.testing.assert_close(out.logdet, logdet_sum, rtol=1e-9, atol=1e-9)
    z, logdet = flow(batch, torch.cat(x))
    torch.testing.assert_close(z, out.z, rtol=0, atol=0)
    torch.testing.assert_close(logdet, out.logdet, rtol=0, atol=0)
    inverted, inverse_logdet = flow.inverse(batch, out.z, logdet=True, tol=1e-12, max_iter=500)
    for part, feat in zip(split_nodes(inverted, graphs), x):
        torch.testing.assert_close(part, feat, rtol=1e-8, atol=1e-8)
    # The inverse's log-det is minus the forward one, on the batch as on each graph.
    torch.testing.assert_close(inverse_logdet, -out.logdet, rtol=1e-8, atol=1e-8)


def test_l3conv_stays_tied_to_its_graph():
    graphs = three_graphs()
    conv = L3Conv(2, 3, graphs[0])
    with pytest.raises(ValueError, match="L3Conv was built for a graph with 3 nodes"):
        conv(batch_graphs(graphs), torch.cat(features(graphs, 2)).float())
