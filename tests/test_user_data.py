"""Your own data set from files (dgl_iflow.data.user) and a data set's own units (dgl_iflow.data.scaling)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dgl_iflow.data import DataFileError, GraphDataset
from dgl_iflow.data.scaling import feature_scale, to_data_units, to_standardized
from dgl_iflow.data.user import load_graph_data, read_edge_list
from dgl_iflow.graphs import graph_from_edges


def arrays(num: int = 50, nodes: int = 3, feats: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, nodes, feats)) * np.arange(1, feats + 1) * 10 + 50
    return x, rng.integers(0, 2, (num, nodes))


def edges(graph) -> set[tuple[int, int]]:
    src, dst = graph.edges()
    return set(zip(src.tolist(), dst.tolist()))


def test_npz_with_edge_index_and_split(tmp_path):
    x, y = arrays()
    split = np.where(np.arange(50) < 40, "train", "test")
    np.savez(tmp_path / "d.npz", x=x, y=y, edge_index=np.array([[0, 1, 1, 0], [1, 2, 2, 0]]), split=split)
    data = load_graph_data(tmp_path / "d.npz")
    assert isinstance(data, GraphDataset) and data.name == "d.npz"
    assert (len(data), data.num_nodes, data.num_features, data.num_classes) == (50, 3, 2, 2)
    assert data.train_idx.tolist() == list(range(40)) and data.test_idx.tolist() == list(range(40, 50))
    assert edges(data.graph) == {(0, 1), (1, 2), (0, 0)}  # the duplicate dropped
    assert data.node_names == ["0", "1", "2"] and data.feature_names == ["x1", "x2"]
    torch.testing.assert_close(data.y, torch.from_numpy(y))


def test_standardization_round_trips_to_the_file_units(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y, edge_index=np.array([[0], [1]]), split=(np.arange(50) >= 40))
    data = load_graph_data(tmp_path / "d.npz")
    train = data.x[data.train_idx].double()
    torch.testing.assert_close(train.mean(0), torch.zeros(3, 2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(3, 2, dtype=torch.float64), atol=1e-5, rtol=0)
    mean, std = feature_scale(data)
    assert mean.shape == std.shape == (3, 2)
    np.testing.assert_allclose(to_data_units(data.x.double(), mean, std).numpy(), x, rtol=1e-6)
    np.testing.assert_allclose(to_standardized(torch.from_numpy(x), mean, std).numpy(), data.x.numpy(), atol=1e-5)


def test_feature_scale_of_a_per_node_scaler_and_of_unscaled_data():
    """traffic and solar record one mean and std per node, shared by the node's two lags."""
    graph = graph_from_edges(torch.tensor([0]), torch.tensor([1]), 2)
    data = GraphDataset("per_node", graph, torch.zeros(4, 2, 2), torch.zeros(4, 2), torch.arange(3),
                        torch.tensor([3]), 2, ["a", "b"], ["t", "t-1"],
                        info={"scaler": {"mean": [10.0, 20.0], "std": [2.0, 4.0]}})
    mean, std = feature_scale(data)
    torch.testing.assert_close(mean, torch.tensor([[10.0, 10.0], [20.0, 20.0]], dtype=torch.float64))
    torch.testing.assert_close(to_data_units(torch.ones(1, 2, 2), mean, std),
                               torch.tensor([[[12.0, 12.0], [24.0, 24.0]]]))
    data.info = {}
    assert feature_scale(data) is None


def test_pt_file_and_edge_list_file(tmp_path):
    x, y = arrays(num=30, nodes=4)
    torch.save({"x": torch.from_numpy(x).float(), "y": torch.from_numpy(y), "node_names": ["n0", "n1", "n2", "n3"]},
               tmp_path / "d.pt")
    (tmp_path / "e.txt").write_text("# src dst\n0 1\n\n1\t2   # tab and comment\n2 3\n")
    data = load_graph_data(tmp_path / "d.pt", tmp_path / "e.txt", undirected=True, test_fraction=0.3)
    assert edges(data.graph) == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    assert len(data.test_idx) == 9 and data.node_names == ["n0", "n1", "n2", "n3"]
    # The random test part is the same on every load, so evaluate sees the split train used.
    assert torch.equal(load_graph_data(tmp_path / "d.pt", tmp_path / "e.txt", test_fraction=0.3).test_idx,
                       data.test_idx)
    assert read_edge_list(tmp_path / "e.txt").tolist() == [[0, 1, 2], [1, 2, 3]]


@pytest.mark.parametrize("entries, message", [
    (dict(y="y", edge_index="ei"), "has no x entry"),
    (dict(x=np.zeros((5, 3)), y="y", edge_index="ei"), r"x must have shape \(N, V, d\)"),
    (dict(x="x", y=np.zeros((5, 3)), edge_index="ei"), r"y must have shape \(N, V\)"),
    (dict(x="x", y="y_fraction", edge_index="ei"), "y must hold whole numbers"),
    (dict(x="x", y="y_negative", edge_index="ei"), "labels y must be whole numbers from 0, found -1"),
    (dict(x="x", y="y_single", edge_index="ei"), "single label 0"),
    (dict(x="x_nan", y="y", edge_index="ei"), "x holds NaN"),
    (dict(x="x", y="y", edge_index=np.array([[0, 1, 2]])), r"edge_index must have shape \(2, E\)"),
    (dict(x="x", y="y", edge_index=np.array([[0], [3]])), r"node ids must lie in \[0, 3\)"),
    (dict(x="x", y="y", edge_index="ei", split=np.full(40, 2)), r"split must be 0 \(train\) or 1 \(test\)"),
    (dict(x="x", y="y", edge_index="ei", split=np.zeros(40)), "every sample in one part"),
    (dict(x="x", y="y", edge_index="ei", node_names=np.array(["a"])), "node_names has 1 names for 3"),
])
def test_malformed_entries_are_named(tmp_path, entries, message):
    x, y = arrays(num=40)
    named = {"x": x, "y": y, "ei": np.array([[0, 1], [1, 2]]), "y_fraction": y + 0.5, "y_negative": y - 1,
             "y_single": np.zeros_like(y), "x_nan": np.where(x > 60, np.nan, x)}
    np.savez(tmp_path / "d.npz", **{key: named[value] if isinstance(value, str) else value
                                    for key, value in entries.items()})
    with pytest.raises(DataFileError, match=message) as error:
        load_graph_data(tmp_path / "d.npz")
    assert "\n" not in str(error.value) and "d.npz" in str(error.value)


def test_unreadable_files_and_arguments(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y, edge_index=np.array([[0], [1]]))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "e.txt").write_text("0 1 2\n")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(FileNotFoundError, match="no data file at"):
        load_graph_data(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="must end in .npz or .pt"):
        load_graph_data(tmp_path / "e.txt")
    with pytest.raises(DataFileError, match="not a readable NumPy .npz archive"):
        load_graph_data(tmp_path / "junk.npz")
    with pytest.raises(DataFileError, match="not a readable NumPy .npz archive"):  # pickles are not read
        load_graph_data(tmp_path / "objects.npz")
    with pytest.raises(DataFileError, match="not a torch.save file"):
        load_graph_data(tmp_path / "junk.pt")
    with pytest.raises(DataFileError, match="holds a Tensor, not a dict"):
        load_graph_data(tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="give the graph once.*not both"):
        load_graph_data(tmp_path / "d.npz", tmp_path / "e.txt")
    with pytest.raises(DataFileError, match="line 1: expected two"):
        read_edge_list(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match="no edge-list file"):
        read_edge_list(tmp_path / "none.txt")
    with pytest.raises(ValueError, match=r"test fraction must lie in \(0, 1\)"):
        load_graph_data(tmp_path / "d.npz", test_fraction=1.0)
