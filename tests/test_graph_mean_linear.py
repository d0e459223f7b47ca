"""GraphMeanLinear: exact inverse and log-det against brute force, whitening on data, in IGNN."""
import pytest
import torch

from dgl_iflow.graphs import batch as batch_graphs
from dgl_iflow import IGNN, TrainConfig, fit
from dgl_iflow.transforms import GraphMeanLinear
from graphs import line_graph, path_graph, single_node_graph, toy_data


def trained_like_layer() -> GraphMeanLinear:
    torch.manual_seed(0)
    layer = GraphMeanLinear(2).double()
    with torch.no_grad():
        layer.mean_map.add_(0.5 * torch.randn(2, 2, dtype=torch.float64))
        layer.deviation_map.add_(0.5 * torch.randn(2, 2, dtype=torch.float64))
    return layer


def test_starts_as_the_identity():
    layer = GraphMeanLinear(2)
    x = torch.randn(3, 4, 2)
    y, logdet = layer(path_graph(), x)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
    assert torch.equal(logdet, torch.zeros(4)) and not layer.initialized


@pytest.mark.parametrize("batched", [False, True])
def test_inverse_is_exact_and_logdet_matches_brute_force(batched):
    layer = trained_like_layer()
    graph = batch_graphs([path_graph(), line_graph(2)]) if batched else path_graph()
    num_nodes = graph.num_nodes()
    x = torch.randn(num_nodes, 5, 2, dtype=torch.float64)
    y, logdet = layer(graph, x)
    back, inverse_logdet = layer.inverse(graph, y, logdet=True)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-13)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=0, atol=0)
    jacobian = torch.autograd.functional.jacobian(
        lambda z: layer(graph, z.reshape(num_nodes, 1, 2))[0].reshape(-1), x[:, 0].reshape(-1))
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jacobian).logabsdet.expand(5), rtol=0, atol=1e-12)
    # The dense Jacobian is P (x) A + (I - P) (x) B, P averaging within each graph.
    sizes = [3, 2] if batched else [3]
    projection = torch.block_diag(*[torch.full((n, n), 1 / n, dtype=torch.float64) for n in sizes])
    mean_map, deviation_map = layer.mean_map.detach().T.contiguous(), layer.deviation_map.detach().T.contiguous()
    dense = torch.kron(projection, mean_map) + torch.kron(torch.eye(num_nodes, dtype=torch.float64) - projection,
                                                          deviation_map)
    torch.testing.assert_close(jacobian, dense, rtol=0, atol=1e-12)


def test_initialization_whitens_the_mean_and_the_deviations_once():
    torch.manual_seed(1)
    graph = path_graph()
    # Nodes share a strong common signal, and the two features are correlated.
    common = torch.randn(1, 400, 2) @ torch.tensor([[3.0, 1.0], [0.0, 0.5]])
    x = (common + 0.2 * torch.randn(3, 400, 2) + torch.tensor([1.0, -2.0])).double()
    layer = GraphMeanLinear(2).double()
    layer.initialize_from_data(graph, x)
    y, _ = layer(graph, x)
    mean = y.mean(0)
    torch.testing.assert_close(torch.cov(mean.T), torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-10)
    deviations = (y - mean).reshape(-1, 2)
    torch.testing.assert_close(torch.cov(deviations.T), torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-10)
    assert layer.initialized
    before = layer.mean_map.clone()
    layer.initialize_from_data(graph, 5 * x)
    assert torch.equal(layer.mean_map, before)  # a trained or loaded layer is not reset


def test_one_node_keeps_the_identity_for_deviations():
    layer = GraphMeanLinear(2).double()
    layer.initialize_from_data(single_node_graph(), torch.randn(1, 50, 2, dtype=torch.float64))
    assert torch.equal(layer.deviation_map, torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 samples"):
        GraphMeanLinear(2).initialize_from_data(path_graph(), torch.randn(3, 1, 2))


def test_gradients_reach_both_maps_and_bad_shapes_are_refused():
    layer = trained_like_layer()
    y, logdet = layer(path_graph(), torch.randn(3, 2, 2, dtype=torch.float64))
    (y.sum() + logdet.sum()).backward()
    assert layer.mean_map.grad.abs().min() > 0 and layer.deviation_map.grad.abs().min() > 0
    with pytest.raises(ValueError, match="GraphMeanLinear"):
        layer(path_graph(), torch.randn(3, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        GraphMeanLinear(0)


def test_ignn_whitens_its_first_layer_in_fit_and_saves_it(tmp_path):
    x, y = toy_data(60)
    graph = path_graph()
    model = IGNN(graph, 2, 2, num_blocks=2, hidden_feats=(8, 8), sigma=0.7, graph_mean_linear=True)
    layer = model.flow.blocks[0]
    assert isinstance(layer, GraphMeanLinear) and model.logdet_mode == "exact"
    expected = GraphMeanLinear(2)
    expected.initialize_from_data(*model.to_flow(graph, x))
    fit(model, graph, x, y, TrainConfig(epochs=1, batch_size=20, lr=1e-12, progress=False, inversion_check_samples=0))
    torch.testing.assert_close(layer.mean_map, expected.mean_map)
    model.save(tmp_path / "model.pt")
    restored = IGNN.load(tmp_path / "model.pt")
    assert restored.flow.blocks[0].initialized
    torch.testing.assert_close(restored.log_prob(graph, x[:5], y[:5]), model.log_prob(graph, x[:5], y[:5]))
    with pytest.raises(ValueError, match="needs a graph"):
        IGNN(graph, 2, 2, conv="mlp", graph_mean_linear=True)
