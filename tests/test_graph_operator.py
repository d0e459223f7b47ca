"""Tests of the dense/sparse graph operators and the per-graph memo."""

import copy
import gc
import pickle

import pytest
import torch

from dgl_iflow.layers import graph_operator as go
from dgl_iflow.graphs import to_dgl
from graphs import make_graph, requires_dgl


def test_threshold_switches_between_dense_and_sparse():
    assert not go.use_sparse(go.DENSE_MAX_NODES)
    assert go.use_sparse(go.DENSE_MAX_NODES + 1)
    assert not go.use_sparse(go.DENSE_MAX_NODES_LEARNABLE, learnable=True)
    assert go.use_sparse(go.DENSE_MAX_NODES_LEARNABLE + 1, learnable=True)
    row, col = torch.tensor([0, 1]), torch.tensor([1, 0])
    small = go.operator_matrix(row, col, torch.ones(2), (go.DENSE_MAX_NODES, go.DENSE_MAX_NODES))
    large = go.operator_matrix(row, col, torch.ones(2), (go.DENSE_MAX_NODES + 1, go.DENSE_MAX_NODES + 1))
    assert not small.is_sparse and large.is_sparse
    learnable = torch.ones(2, requires_grad=True)
    n = go.DENSE_MAX_NODES_LEARNABLE
    assert not go.operator_matrix(row, col, learnable, (n, n)).is_sparse
    assert go.operator_matrix(row, col, learnable, (n + 1, n + 1)).is_sparse


@pytest.mark.parametrize("num_nodes", [7, go.DENSE_MAX_NODES + 50])
def test_operator_matrix_sums_duplicates_and_matches_dense_reference(num_nodes):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 2 * num_nodes, (5 * num_nodes,), generator=gen)
    cols = torch.randint(0, num_nodes, (5 * num_nodes,), generator=gen)
    rows[:3], cols[:3] = 1, 2  # a triple duplicate
    values = torch.randn(len(rows), generator=gen, dtype=torch.float64)
    matrix = go.operator_matrix(rows, cols, values, (2 * num_nodes, num_nodes))
    expected = torch.zeros(2 * num_nodes, num_nodes, dtype=torch.float64)
    for r, c, v in zip(rows.tolist(), cols.tolist(), values.tolist()):
        expected[r, c] += v
    torch.testing.assert_close(go.dense_matrix(matrix), expected, rtol=0, atol=1e-12)

    feat = torch.randn(num_nodes, 3, 2, 4, generator=gen, dtype=torch.float64)
    out = go.node_matmul(matrix, feat)
    assert out.shape == (2 * num_nodes, 3, 2, 4)
    torch.testing.assert_close(out, torch.einsum("rv,vabc->rabc", expected, feat), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_nodes", [6, go.DENSE_MAX_NODES_LEARNABLE + 10])
def test_operator_matrix_is_differentiable_in_values(num_nodes):
    gen = torch.Generator().manual_seed(1)
    rows = torch.arange(num_nodes).repeat(2)
    cols = torch.cat([torch.arange(num_nodes), torch.randint(0, num_nodes, (num_nodes,), generator=gen)])
    feat = torch.randn(num_nodes, 2, dtype=torch.float64, generator=gen)
    values = torch.randn(len(rows), dtype=torch.float64, generator=gen, requires_grad=True)

    def apply(v):
        return go.node_matmul(go.operator_matrix(rows, cols, v, (num_nodes, num_nodes)), feat)

    assert torch.autograd.gradcheck(apply, (values,), fast_mode=True)


def test_sparse_pattern_sorts_merges_and_transposes():
    num_nodes = go.DENSE_MAX_NODES + 3
    gen = torch.Generator().manual_seed(2)
    rows = torch.randint(0, 2 * num_nodes, (4 * num_nodes,), generator=gen)
    cols = torch.randint(0, num_nodes, (4 * num_nodes,), generator=gen)
    rows[:2], cols[:2] = 5, 7  # a duplicate
    pattern, slots = go.SparsePattern.from_pairs(rows, cols, (2 * num_nodes, num_nodes))
    keys = pattern.row * num_nodes + pattern.col
    assert torch.equal(keys, torch.unique(rows * num_nodes + cols))  # unique and sorted
    assert torch.equal(pattern.row[slots], rows) and torch.equal(pattern.col[slots], cols)
    assert pattern.nnz == len(keys) and torch.equal(pattern.crow[-1], torch.tensor(pattern.nnz))
    values = torch.randn(pattern.nnz, dtype=torch.float64, generator=gen)
    dense = pattern.with_values(values).to_dense()
    transposed, order = pattern.transpose()
    assert transposed.shape == (num_nodes, 2 * num_nodes)
    torch.testing.assert_close(transposed.with_values(values[order]).to_dense(), dense.T, rtol=0, atol=0)
    back, back_order = transposed.transpose()
    assert back is pattern and torch.equal(values[order][back_order], values)
    flat = torch.randn(num_nodes, 3, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(pattern.matmul(values, flat), dense @ flat, rtol=1e-12, atol=1e-12)
    left = torch.randn(2 * num_nodes, 3, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(pattern.sampled_products(left, flat), (left @ flat.T)[pattern.row, pattern.col],
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="non-zeros"):
        pattern.with_values(torch.zeros(pattern.nnz + 1))


def test_check_features_names_the_expected_shape():
    g = make_graph(([0, 1], [1, 2]))
    go.check_features(g, torch.zeros(3, 5, 4), 4, "Layer")
    for bad in (torch.zeros(3, 5, 3), torch.zeros(4, 4), torch.zeros(3)):
        with pytest.raises(ValueError, match=r"Layer expects features of shape \(V, \*, 4\) with V = 3"):
            go.check_features(g, bad, 4, "Layer")


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.calls


@requires_dgl
def test_graph_memo_hits_same_graph_and_key_only():
    memo, build = go.GraphMemo(), _Counter()
    g = to_dgl(make_graph(([0, 1], [1, 2])))
    assert memo.get(g, ("cpu",), build) == 1
    assert memo.get(g, ("cpu",), build) == 1
    assert memo.get(g, ("other",), build) == 2  # another key
    same_edges = to_dgl(make_graph(([0, 1], [1, 2])))
    assert memo.get(same_edges, ("other",), build) == 3  # another graph object
    g.add_edges([2], [0])  # in-place mutation
    assert memo.get(g, ("other",), build) == 4
    assert memo.get(g, ("other",), build) == 4
    g.add_nodes(1)
    assert memo.get(g, ("other",), build) == 5


def test_graph_memo_holds_the_graph_weakly():
    memo = go.GraphMemo()
    g = make_graph(([0], [1]))
    memo.get(g, (), lambda: 1)
    ref = memo._graph_ref
    del g
    gc.collect()
    assert ref() is None
    assert memo.get(make_graph(([0], [1])), (), lambda: 2) == 2


def test_graph_memo_is_dropped_on_pickle_and_copy():
    memo = go.GraphMemo()
    g = make_graph(([0], [1]))
    memo.get(g, (), lambda: torch.ones(2))
    for clone in (pickle.loads(pickle.dumps(memo)), copy.deepcopy(memo), copy.copy(memo)):
        assert clone._value is None and clone._graph_ref is None
        assert clone.get(g, (), lambda: "rebuilt") == "rebuilt"


def test_sparse_gradients_twice_differentiable(monkeypatch):
    """Sparse operators with learnable values: first and second derivatives, both arguments."""
    monkeypatch.setattr(go, "DENSE_MAX_NODES", 4)
    monkeypatch.setattr(go, "DENSE_MAX_NODES_LEARNABLE", 4)
    num_nodes = 7
    gen = torch.Generator().manual_seed(3)
    rows = torch.cat([torch.arange(num_nodes), torch.arange(num_nodes)])
    cols = torch.cat([torch.arange(num_nodes), torch.randint(0, num_nodes, (num_nodes,), generator=gen)])
    values = torch.randn(len(rows), dtype=torch.float64, generator=gen, requires_grad=True)
    feat = torch.randn(num_nodes, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)

    def apply(v, x):
        matrix = go.operator_matrix(rows, cols, v, (num_nodes, num_nodes))
        assert matrix.is_sparse
        return go.node_matmul(matrix, x)

    assert torch.autograd.gradcheck(apply, (values, feat))
    assert torch.autograd.gradgradcheck(apply, (values, feat))


def test_sparse_value_gradient_is_linear_in_nonzeros():
    """The gradient of sparse values matches the dense one, without a dense (V, V) product."""
    num_nodes = 3000
    rows = torch.arange(num_nodes).repeat(3)
    cols = torch.randint(0, num_nodes, (3 * num_nodes,), generator=torch.Generator().manual_seed(4))
    values = torch.randn(3 * num_nodes, requires_grad=True)
    feat = torch.randn(num_nodes, 8)
    matrix = go.operator_matrix(rows, cols, values, (num_nodes, num_nodes))
    cotangent = torch.randn(num_nodes, 8)
    (grad,) = torch.autograd.grad(go.node_matmul(matrix, feat), values, cotangent)
    expected = (cotangent[rows] * feat[cols]).sum(-1)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)
