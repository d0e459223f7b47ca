"""BasisConv's graph-mean operator and operator diagonals, and NodewiseConv, against dense references."""
import numpy as np
import pytest
import torch

from dgl_iflow.graphs import Graph, batch as batch_graphs
from dgl_iflow.layers import ChebConv, L3Conv, NodewiseConv
from dgl_iflow.layers.basis_conv import node_mean, node_mean_matrix
from graphs import path_graph, random_graph


def make_conv(kind: str, graph: Graph, graph_mean: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "cheb":
        conv = ChebConv(2, 5, k=3, graph_mean=graph_mean)
    else:
        conv = L3Conv(2, 5, graph, orders=(0, 1), graph_mean=graph_mean)
    with torch.no_grad():
        conv.bias.normal_()
    return conv.double()


@pytest.mark.parametrize("kind", ["cheb", "l3"])
def test_graph_mean_adds_one_operator_read_from_all_nodes(kind):
    graph = random_graph(7, 2.0, seed=3)
    conv = make_conv(kind, graph, graph_mean=True)
    x = torch.randn(7, 4, 2, dtype=torch.float64)
    weight = conv.weight.detach().numpy()
    assert conv.num_bases == weight.shape[0] == (3 if kind == "cheb" else 2) + 1
    local = conv.basis_matrices(graph).detach().numpy()
    mean = np.full((7, 7), 1 / 7)
    operators = np.concatenate([local, mean[None]])
    expected = sum(np.einsum("vu,ubi,io->vbo", operators[k], x.numpy(), weight[k]) for k in range(len(weight)))
    expected = expected + conv.bias.detach().numpy()
    np.testing.assert_allclose(conv(graph, x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.operator_matrices(graph).detach().numpy(), operators, rtol=0, atol=1e-15)


def test_without_graph_mean_the_operators_are_the_bases():
    graph = path_graph()
    conv = make_conv("l3", graph, graph_mean=False)
    assert torch.equal(conv.operator_matrices(graph), conv.basis_matrices(graph))
    assert conv.num_bases == 2


def test_graph_mean_is_per_graph_in_a_batch():
    graphs = [random_graph(4, 2.0, seed=1), path_graph(), random_graph(6, 2.0, seed=2)]
    batched = batch_graphs(graphs)
    x = torch.randn(13, 3, 2, dtype=torch.float64)
    pieces = x.split([4, 3, 6])
    expected = torch.cat([piece.mean(0, keepdim=True).expand_as(piece) for piece in pieces])
    torch.testing.assert_close(node_mean(batched, x), expected, rtol=0, atol=1e-15)
    matrix = node_mean_matrix(batched, x)
    torch.testing.assert_close(torch.einsum("vu,ubi->vbi", matrix, x), expected, rtol=0, atol=1e-15)
    assert matrix[:4, 4:].abs().max() == 0 and matrix[4:7, 7:].abs().max() == 0


def test_batched_chebconv_with_graph_mean_equals_per_graph_calls():
    graphs = [random_graph(5, 2.0, seed=4), random_graph(6, 3.0, seed=5)]
    conv = ChebConv(2, 3, k=2, lambda_max=2.0, graph_mean=True).double()
    x = [torch.randn(g.num_nodes(), 4, 2, dtype=torch.float64) for g in graphs]
    together = conv(batch_graphs(graphs), torch.cat(x))
    separately = torch.cat([conv(g, part) for g, part in zip(graphs, x)])
    torch.testing.assert_close(together, separately, rtol=1e-12, atol=1e-12)


def test_operator_diagonals_are_those_of_the_dense_operators():
    graph = batch_graphs([random_graph(5, 2.0, seed=6), path_graph()])
    convs = [make_conv(kind, graph, graph_mean) for kind in ("cheb", "l3") for graph_mean in (False, True)]
    for conv in [*convs, NodewiseConv(2, 5).double()]:
        expected = conv.operator_matrices(graph).diagonal(dim1=1, dim2=2)
        torch.testing.assert_close(conv.operator_diagonals(graph), expected, rtol=0, atol=0)


def test_nodewise_conv_is_a_linear_layer_on_every_node():
    torch.manual_seed(0)
    conv = NodewiseConv(3, 4).double()
    assert conv.weight.shape == (1, 3, 4) and conv.num_bases == 1
    with torch.no_grad():
        conv.bias.normal_()
    graph = random_graph(6, 2.0, seed=7)
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(conv(graph, x), x @ conv.weight[0] + conv.bias, rtol=1e-14, atol=1e-14)
    assert torch.equal(conv.operator_matrices(graph), torch.eye(6, dtype=torch.float64)[None])
    assert NodewiseConv(3, 4, bias=False).bias is None
