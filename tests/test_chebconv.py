"""ChebConv against a dense Chebyshev reference built here with numpy."""

import copy
import pickle

import numpy as np
import pytest
import torch

from dgl_iflow.graphs import to_dgl
from dgl_iflow.layers import ChebConv, laplacian_lambda_max
from dgl_iflow.layers.graph_operator import DENSE_MAX_NODES, DENSE_MAX_NODES_LEARNABLE
from graphs import make_graph, random_graph, requires_dgl


def dense_scaled_laplacian(graph, weight=None, lambda_max=None) -> tuple[np.ndarray, float]:
    """L~ = 2 L / lambda_max - I with L = I - D^-1/2 A D^-1/2, A[dst, src], weighted in-degrees."""
    n = graph.num_nodes()
    src, dst = (t.numpy() for t in graph.edges())
    w = np.ones(len(src)) if weight is None else weight.detach().double().numpy()
    adj = np.zeros((n, n))
    np.add.at(adj, (dst, src), w)
    degree = adj.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    lap = np.eye(n) - inv_sqrt[:, None] * adj * inv_sqrt[None, :]
    if lambda_max is not None:
        lam = lambda_max
    elif np.allclose(lap, lap.T):
        lam = float(np.linalg.eigvalsh(lap).max())
    else:
        lam = float(np.linalg.eigvals(lap).real.max())
    if lam < 1e-6:  # L = 0: the layer documents lambda_max = 2 then
        lam = 2.0
    return 2.0 * lap / lam - np.eye(n), lam


def dense_chebconv(conv: ChebConv, graph, feat: torch.Tensor, weight=None, lambda_max=None) -> np.ndarray:
    lt, _ = dense_scaled_laplacian(graph, weight, lambda_max)
    n = lt.shape[0]
    polys = [np.eye(n), lt]
    for _ in range(2, conv.num_bases):
        polys.append(2 * lt @ polys[-1] - polys[-2])
    x = feat.detach().double().numpy()
    w = conv.weight.detach().double().numpy()
    out = sum(np.einsum("vu,u...i,io->v...o", polys[k], x, w[k]) for k in range(conv.num_bases))
    return out + conv.bias.detach().double().numpy()


def _conv(k=3, in_feats=2, out_feats=5, seed=0, **kwargs):
    torch.manual_seed(seed)
    conv = ChebConv(in_feats, out_feats, k=k, **kwargs).double()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


@pytest.mark.parametrize("num_nodes", [1, 5, 40, DENSE_MAX_NODES + 44])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_dense_reference(num_nodes, weighted):
    g = random_graph(num_nodes, 3.0, seed=num_nodes)
    if num_nodes == 1:
        g = make_graph(([0], [0]))
    weight = torch.rand(g.num_edges(), dtype=torch.float64) + 0.1 if weighted else None
    conv = _conv(k=4)
    x = torch.randn(num_nodes, 3, 2, dtype=torch.float64)
    out = conv(g, x, edge_weight=weight)
    np.testing.assert_allclose(out.detach().numpy(), dense_chebconv(conv, g, x, weight), rtol=1e-5, atol=1e-5)


def test_directed_graph_with_sources_and_isolated_nodes():
    # node 3 has out-edges only (zero in-degree), node 4 is isolated
    g = make_graph(([0, 1, 3, 3, 2], [1, 2, 0, 2, 0]), num_nodes=5)
    conv = _conv(k=3)
    x = torch.randn(5, 2, dtype=torch.float64)
    np.testing.assert_allclose(conv(g, x).detach().numpy(), dense_chebconv(conv, g, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_nodes", [30, 520])  # dense eigenvalues up to 512 nodes, ARPACK above
def test_lambda_max_computed_matches_eigvals(num_nodes):
    cases = [(True, False), (False, True)] if num_nodes > 512 else [(u, w) for u in (True, False) for w in (False, True)]
    for undirected, weighted in cases:
        g = random_graph(num_nodes, 4.0, seed=7, undirected=undirected)
        w = torch.rand(g.num_edges(), dtype=torch.float64) + 0.5 if weighted else None
        _, expected = dense_scaled_laplacian(g, w)
        assert laplacian_lambda_max(g, w) == [pytest.approx(expected, rel=1e-6)]


def test_given_lambda_max_is_used():
    g = random_graph(20, 3.0, seed=3)
    conv_given = _conv(k=3, lambda_max=2.0)
    conv_computed = _conv(k=3)
    x = torch.randn(20, 2, dtype=torch.float64)
    np.testing.assert_allclose(conv_given(g, x).detach().numpy(), dense_chebconv(conv_given, g, x, lambda_max=2.0),
                               rtol=1e-5, atol=1e-5)
    _, lam = dense_scaled_laplacian(g)
    assert lam < 1.99  # so the two differ
    assert not torch.allclose(conv_given(g, x), conv_computed(g, x))
    with pytest.raises(ValueError, match="lambda_max must be positive"):
        ChebConv(2, 3, k=2, lambda_max=0.0)


@pytest.mark.parametrize("shape", [(), (4,), (2, 3)])
def test_sample_shapes(shape):
    g = random_graph(12, 3.0, seed=4)
    conv = _conv(k=3)
    x = torch.randn(12, *shape, 2, dtype=torch.float64)
    out = conv(g, x)
    assert out.shape == (12, *shape, 5)
    np.testing.assert_allclose(out.detach().numpy(), dense_chebconv(conv, g, x), rtol=1e-5, atol=1e-5)


def test_k1_is_node_wise_and_k2_uses_laplacian():
    g = random_graph(6, 2.0, seed=5)
    x = torch.randn(6, 2, dtype=torch.float64)
    for k in (1, 2):
        conv = _conv(k=k)
        np.testing.assert_allclose(conv(g, x).detach().numpy(), dense_chebconv(conv, g, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_nodes", [8, DENSE_MAX_NODES_LEARNABLE + 20])
def test_edge_weight_gradient_by_finite_differences(num_nodes):
    g = random_graph(num_nodes, 2.0, seed=11)
    conv = _conv(k=3, lambda_max=1.7)
    x = torch.randn(num_nodes, 2, 2, dtype=torch.float64)
    weight = (torch.rand(g.num_edges(), dtype=torch.float64) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: conv(g, x, edge_weight=w), (weight,), fast_mode=num_nodes > 50)


def test_bad_edge_weight_and_features():
    g = random_graph(6, 2.0, seed=5)
    conv = _conv()
    with pytest.raises(ValueError, match=r"edge_weight must have shape"):
        conv(g, torch.randn(6, 2, dtype=torch.float64), edge_weight=torch.ones(g.num_edges() + 1))
    with pytest.raises(ValueError, match="ChebConv expects features"):
        conv(g, torch.randn(7, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="ChebConv expects features"):
        conv(g, torch.randn(6, 3, dtype=torch.float64))


@requires_dgl
def test_graph_data_unchanged():
    g = to_dgl(random_graph(10, 3.0, seed=6))
    g.ndata["h"] = torch.arange(10.0)
    g.edata["w"] = torch.rand(g.num_edges())
    ndata, edata = g.ndata["h"].clone(), g.edata["w"].clone()
    conv = _conv()
    conv(g, torch.randn(10, 2, dtype=torch.float64), edge_weight=g.edata["w"].double())
    conv(g, torch.randn(10, 2, dtype=torch.float64))
    assert set(g.ndata.keys()) == {"h"} and set(g.edata.keys()) == {"w"}
    assert torch.equal(g.ndata["h"], ndata) and torch.equal(g.edata["w"], edata)


def test_state_dict_pickle_and_deepcopy_round_trips():
    g = random_graph(DENSE_MAX_NODES + 5, 3.0, seed=8)
    conv = _conv(k=3)
    x = torch.randn(g.num_nodes(), 2, 2, dtype=torch.float64)
    out = conv(g, x)  # fills the Laplacian cache (a sparse tensor)
    fresh = _conv(k=3, seed=99)
    fresh.load_state_dict(conv.state_dict())
    torch.testing.assert_close(fresh(g, x), out, rtol=0, atol=0)
    for clone in (pickle.loads(pickle.dumps(conv)), copy.deepcopy(conv)):
        torch.testing.assert_close(clone(g, x), out, rtol=0, atol=0)


@requires_dgl
def test_cache_follows_graph_mutation_and_dtype():
    g = to_dgl(random_graph(9, 2.0, seed=9))
    conv = _conv()
    x = torch.randn(9, 2, dtype=torch.float64)
    before = conv(g, x)
    g.add_edges([0, 1, 2], [5, 6, 7])
    after = conv(g, x)
    assert not torch.allclose(before, after)
    np.testing.assert_allclose(after.detach().numpy(), dense_chebconv(conv, g, x), rtol=1e-5, atol=1e-5)
    out32 = conv.float()(g, x.float())
    np.testing.assert_allclose(out32.detach().numpy(), dense_chebconv(conv, g, x.float()), rtol=1e-4, atol=1e-4)
