"""NodeAffine: exact inverse and log-det against brute force; shape errors."""
import pytest
import torch

from dgl_iflow.transforms import NodeAffine
from graphs import path_graph


def trained_like_layer() -> NodeAffine:
    torch.manual_seed(0)
    layer = NodeAffine(3, 2).double()
    with torch.no_grad():
        layer.log_scale.normal_()
        layer.shift.normal_()
    return layer


def test_starts_as_the_identity():
    layer = NodeAffine(3, 2)
    x = torch.randn(3, 4, 2)
    y, logdet = layer(path_graph(), x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(4))


def test_inverse_is_exact_and_logdet_matches_brute_force():
    layer = trained_like_layer()
    graph = path_graph()
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    y, logdet = layer(graph, x)
    back, inverse_logdet = layer.inverse(graph, y, logdet=True)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=0, atol=0)
    jacobian = torch.autograd.functional.jacobian(lambda z: layer(graph, z.reshape(3, 1, 2))[0].reshape(-1),
                                                  x[:, 0].reshape(-1))
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jacobian).logabsdet.expand(5), rtol=0, atol=1e-12)
    assert y.shape == x.shape and logdet.shape == (5,)


def test_logdet_false_and_gradients_reach_both_parameters():
    layer = trained_like_layer()
    y, logdet = layer(path_graph(), torch.randn(3, 2, 2, dtype=torch.float64))
    assert layer(path_graph(), torch.randn(3, 2, 2, dtype=torch.float64), logdet=False)[1] is None
    (y.sum() + logdet.sum()).backward()
    assert layer.log_scale.grad.abs().min() > 0 and layer.shift.grad.abs().min() > 0


def test_bad_shapes_are_refused():
    layer = NodeAffine(3, 2)
    with pytest.raises(ValueError, match="built for 3 nodes of 2 features"):
        layer(path_graph(), torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="built for 3 nodes"):
        layer.inverse(path_graph(), torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match="positive"):
        NodeAffine(0, 2)
