"""L3Conv against a dense masked reference; spectral (ChebConv) vs spatial (L3Conv) equivariance."""

import pickle
from collections import deque

import numpy as np
import pytest
import torch

from dgl_iflow.layers import ChebConv, L3Conv, khop_pairs
from dgl_iflow.layers.graph_operator import DENSE_MAX_NODES_LEARNABLE
from graphs import make_graph, path_graph, random_graph


def reach_mask(graph, order: int) -> np.ndarray:
    """mask[v, u]: u reaches v in at most ``order`` hops, from powers of (A + I), A[dst, src]."""
    n = graph.num_nodes()
    src, dst = (t.numpy() for t in graph.edges())
    step = np.eye(n, dtype=np.int64)
    step[dst, src] = 1
    reach = np.eye(n, dtype=np.int64)
    for _ in range(order):
        reach = np.minimum(reach @ step, 1)
    return reach.astype(bool)


def bfs_reach(graph, order: int) -> set:
    """(v, u) pairs with a directed path u -> ... -> v of at most ``order`` edges, by BFS."""
    src, dst = (t.tolist() for t in graph.edges())
    out = {u: [] for u in range(graph.num_nodes())}
    for s, d in zip(src, dst):
        out[s].append(d)
    pairs = set()
    for u in range(graph.num_nodes()):
        depth = {u: 0}
        queue = deque([u])
        while queue:
            node = queue.popleft()
            pairs.add((node, u))
            if depth[node] < order:
                for nxt in out[node]:
                    if nxt not in depth:
                        depth[nxt] = depth[node] + 1
                        queue.append(nxt)
    return pairs


def dense_l3conv(conv: L3Conv, graph, feat: torch.Tensor) -> np.ndarray:
    """Dense masked filters a_m filled in row-major order of their masks, then sum_m a_m X W_m + b."""
    values = conv.filter_values.detach().double().numpy()
    x = feat.detach().double().numpy()
    w = conv.weight.detach().double().numpy()
    out, offset = 0.0, 0
    for m, order in enumerate(conv.orders):
        mask = reach_mask(graph, order)
        filt = np.zeros(mask.shape)
        count = int(mask.sum())
        filt[np.nonzero(mask)] = values[offset:offset + count]
        offset += count
        out = out + np.einsum("vu,u...i,io->v...o", filt, x, w[m])
    assert offset == len(values)
    return out + conv.bias.detach().double().numpy()


def _conv(graph, orders=(0, 1, 2), in_feats=2, out_feats=4, seed=0):
    torch.manual_seed(seed)
    conv = L3Conv(in_feats, out_feats, graph, orders=orders).double()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_khop_pairs_match_bfs_on_directed_graph(order):
    g = random_graph(25, 1.5, seed=order, undirected=False)
    rows, cols = khop_pairs(g, order)
    pairs = list(zip(rows.tolist(), cols.tolist()))
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)
    assert set(pairs) == bfs_reach(g, order)


@pytest.mark.parametrize("num_nodes", [6, 50, DENSE_MAX_NODES_LEARNABLE + 30])
@pytest.mark.parametrize("shape", [(), (3,), (2, 2)])
def test_matches_dense_masked_reference(num_nodes, shape):
    g = random_graph(num_nodes, 2.5, seed=num_nodes)
    conv = _conv(g, orders=(0, 1, 2, 1))
    x = torch.randn(num_nodes, *shape, 2, dtype=torch.float64)
    out = conv(g, x)
    assert out.shape == (num_nodes, *shape, 4)
    np.testing.assert_allclose(out.detach().numpy(), dense_l3conv(conv, g, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_nodes", [6, DENSE_MAX_NODES_LEARNABLE + 30])
def test_basis_matrices_match_mask(num_nodes):
    g = random_graph(num_nodes, 2.0, seed=1)
    conv = _conv(g)
    bases = conv.basis_matrices(g).detach().numpy()
    for m, order in enumerate(conv.orders):
        assert np.array_equal(bases[m] != 0, reach_mask(g, order))


def test_parameter_count_is_sparse():
    g = random_graph(DENSE_MAX_NODES_LEARNABLE + 30, 2.0, seed=2)
    orders = (0, 1, 2)
    conv = _conv(g, orders=orders, in_feats=3, out_feats=5)
    pair_counts = sum(int(reach_mask(g, o).sum()) for o in orders)
    expected = pair_counts + len(orders) * 3 * 5 + 5
    assert sum(p.numel() for p in conv.parameters()) == expected
    assert pair_counts < g.num_nodes() ** 2 / 10
    assert all(b.numel() < g.num_nodes() ** 2 for b in conv.buffers())


def test_filter_gradient_by_finite_differences():
    g = random_graph(7, 2.0, seed=3)
    conv = _conv(g, orders=(1, 2))
    x = torch.randn(7, 2, 2, dtype=torch.float64)

    def apply(values):
        return torch.func.functional_call(conv, {"filter_values": values}, (g, x))

    values = conv.filter_values.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(apply, (values,))


def test_other_graph_is_rejected_and_same_edges_accepted():
    g = random_graph(12, 2.0, seed=4)
    conv = _conv(g)
    x = torch.randn(12, 2, dtype=torch.float64)
    expected = conv(g, x)
    src, dst = g.edges()
    perm = torch.randperm(len(src), generator=torch.Generator().manual_seed(0))
    same = make_graph((src[perm], dst[perm]), num_nodes=12)
    torch.testing.assert_close(conv(same, x), expected, rtol=0, atol=0)

    more_nodes = make_graph((src, dst), num_nodes=13)
    rewired = make_graph((torch.cat([src[:-1], (src[-1:] + 1) % 12]), dst), num_nodes=12)
    extra_edge = make_graph((torch.cat([src, torch.tensor([0])]), torch.cat([dst, torch.tensor([5])])), num_nodes=12)
    for bad in (rewired, extra_edge):
        with pytest.raises(ValueError, match=r"L3Conv was built for a graph with 12 nodes and \d+ edges"):
            conv(bad, x)
    with pytest.raises(ValueError, match="L3Conv"):
        conv(more_nodes, torch.randn(13, 2, dtype=torch.float64))
    # a rejected graph stays rejected, the right one still works
    with pytest.raises(ValueError):
        conv(rewired, x)
    torch.testing.assert_close(conv(g, x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no edge_weight"):
        conv(g, x, edge_weight=torch.ones(g.num_edges()))


def test_pickle_and_state_dict_round_trips():
    g = random_graph(DENSE_MAX_NODES_LEARNABLE + 5, 2.0, seed=5)
    conv = _conv(g)
    x = torch.randn(g.num_nodes(), 3, 2, dtype=torch.float64)
    out = conv(g, x)
    clone = pickle.loads(pickle.dumps(conv))
    torch.testing.assert_close(clone(g, x), out, rtol=0, atol=0)
    fresh = _conv(g, seed=7)
    fresh.load_state_dict(conv.state_dict())
    torch.testing.assert_close(fresh(g, x), out, rtol=0, atol=0)


def test_invalid_orders():
    g = random_graph(5, 2.0, seed=6)
    for orders in ((), (-1,), (1, -2)):
        with pytest.raises(ValueError, match="orders"):
            L3Conv(2, 3, g, orders=orders)


def test_chebconv_commutes_with_reflection_l3conv_does_not():
    g = path_graph()
    perm = torch.tensor([2, 1, 0])  # the automorphism 0 <-> 2
    torch.manual_seed(0)
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    for seed in range(3):
        torch.manual_seed(seed)
        cheb = ChebConv(2, 4, k=3).double()
        with torch.no_grad():
            cheb.weight.normal_()
        torch.testing.assert_close(cheb(g, x[perm]), cheb(g, x)[perm], rtol=0, atol=1e-6)

        l3 = _conv(g, orders=(0, 1, 2), seed=seed)
        gap = (l3(g, x[perm]) - l3(g, x)[perm]).abs().max().item()
        assert gap > 0.1, gap


def test_node_bias_is_a_bias_per_node_for_every_sample_shape():
    torch.manual_seed(0)
    graph = make_graph(([0, 1, 1, 2], [1, 0, 2, 1]))
    conv = L3Conv(2, 4, graph, orders=(0, 1), node_bias=True).double()
    with torch.no_grad():
        conv.bias.copy_(torch.randn(3, 4, dtype=torch.float64))
    for shape in [(3, 2), (3, 5, 2), (3, 2, 4, 2)]:
        feat = torch.randn(*shape, dtype=torch.float64)
        expected = conv.linear_part(graph, feat) + conv.bias.reshape(3, *([1] * (len(shape) - 2)), 4)
        assert torch.allclose(conv(graph, feat), expected, atol=1e-12)
    assert conv.bias.shape == (3, 4)
    with pytest.raises(ValueError, match="node_bias=True needs bias=True"):
        L3Conv(2, 4, graph, node_bias=True, bias=False)
