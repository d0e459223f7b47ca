"""Tests of the JKO velocity fields, divergences and RK4 blocks against closed forms and brute force."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

from dgl_iflow.graphs import Graph
from dgl_iflow.layers import ChebConv, L3Conv, NodewiseConv
from dgl_iflow.transforms import (
    FieldSpec, GraphVelocityField, InversionError, InversionWarning, JKOBlock, autograd_divergence,
    hutchinson_divergence, make_probes,
)
from graphs import brute_force_jacobian, cycle_graph, make_graph


def _random_field(conv, seed: int = 0, scale: float = 0.4, activation: str = "tanh") -> GraphVelocityField:
    """A field with every parameter random: a new field is zero by design, which tests nothing."""
    field = GraphVelocityField(conv, hidden_feats=(8,), activation=activation).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in field.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return field


def _convs(graph: Graph, feats: int) -> dict[str, nn.Module]:
    return {
        "node": NodewiseConv(feats, 6),
        "cheb": ChebConv(feats, 6, k=3),
        "l3": L3Conv(feats, 6, graph, orders=(0, 1, 2)),
    }


class LinearField(nn.Module):
    """f(x) = A vec(x) over all nodes and channels of a sample: a flow map with a closed form."""

    def __init__(self, matrix: torch.Tensor, num_nodes: int, feats: int) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix)
        self.shape = (num_nodes, feats)

    def forward(self, graph, x, t):
        flat = x.permute(1, 0, 2).reshape(x.shape[1], -1)  # (B, V D), node-major
        out = flat @ self.matrix.T
        return out.reshape(x.shape[1], *self.shape).permute(1, 0, 2)


@pytest.fixture
def linear_block():
    generator = torch.Generator().manual_seed(0)
    num_nodes, feats = 3, 2
    matrix = 0.8 * torch.randn(6, 6, generator=generator, dtype=torch.float64)
    field = LinearField(matrix, num_nodes, feats)
    x = torch.randn(num_nodes, 4, feats, generator=generator, dtype=torch.float64)
    return field, x, cycle_graph(num_nodes)


def test_linear_field_flow_map_is_expm_at_fourth_order(linear_block):
    field, x, graph = linear_block
    t0, t1 = 0.3, 1.1
    exact_map = torch.from_numpy(expm(field.matrix.detach().numpy() * (t1 - t0)))
    expected = (x.permute(1, 0, 2).reshape(4, -1) @ exact_map.T).reshape(4, 3, 2).permute(1, 0, 2)
    errors = []
    for steps in (2, 4, 8, 16):
        block = JKOBlock(field, t0, t1, steps=steps, divergence="autograd")
        with torch.no_grad():
            out, logdet = block(graph, x)
        errors.append(float((out - expected).abs().max()))
        # The divergence is the constant trace(A): RK4 integrates it exactly.
        np.testing.assert_allclose(logdet.numpy(), float(field.matrix.trace()) * (t1 - t0), rtol=1e-12)
    rates = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(12.0 < rate < 20.0 for rate in rates), (errors, rates)  # S^-4: 16 per doubling
    assert errors[-1] < 1e-5


@pytest.mark.parametrize("rtol", [1e-5, 1e-8, 1e-11])
def test_adaptive_solver_reaches_the_expm_flow_map_to_its_tolerance(linear_block, rtol):
    field, x, graph = linear_block
    t0, t1 = 0.3, 1.1
    exact_map = torch.from_numpy(expm(field.matrix.detach().numpy() * (t1 - t0)))
    expected = (x.permute(1, 0, 2).reshape(4, -1) @ exact_map.T).reshape(4, 3, 2).permute(1, 0, 2)
    block = JKOBlock(field, t0, t1, divergence="autograd", solver="dopri5", rtol=rtol, atol=rtol * 1e-2)
    with torch.no_grad():
        out, logdet = block(graph, x)
        back, _ = block.inverse(graph, out, tol=100 * rtol)
    error = float(((out - expected).norm(dim=(0, -1)) / expected.norm(dim=(0, -1))).max())
    # Dormand-Prince controls the local error per step; the global error stays within a small
    # multiple of the tolerance, and falls with it (RK4 with 16 steps: 1e-5 absolute above).
    assert error < 50 * rtol, error
    np.testing.assert_allclose(logdet.numpy(), float(field.matrix.trace()) * (t1 - t0), rtol=50 * rtol)
    torch.testing.assert_close(back, x, rtol=0, atol=200 * rtol)
    assert block.last_inverse_error <= 100 * rtol


def test_inverse_is_checked_against_the_forward_map(linear_block):
    field, x, graph = linear_block
    coarse = JKOBlock(field, 0.0, 2.0, steps=1, divergence="autograd")
    with torch.no_grad():
        y, _ = coarse(graph, x)
        with pytest.raises(InversionError, match="misses the forward map"):
            coarse.inverse(graph, y, tol=1e-4)
        assert coarse.last_inverse_error > 1e-4
        with pytest.warns(InversionWarning, match="misses the forward map"):
            coarse.inverse(graph, y, tol=1e-4, on_failure="warn")
        # The adaptive solver integrates the same ODE to its tolerance: its inverse passes.
        JKOBlock(field, 0.0, 2.0, divergence="autograd", solver="dopri5", rtol=1e-9, atol=1e-11).inverse(
            graph, y, tol=1e-4)
    assert float(coarse.round_trip_error(graph, x).max()) > 1e-3


@pytest.mark.parametrize("conv_name", ["node", "cheb", "l3"])
def test_exact_divergence_matches_brute_force_trace(conv_name):
    graph = cycle_graph(5)
    field = _random_field(_convs(graph, 3)[conv_name].double())
    x = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = 0.7
    out, divergence = field.forward_with_divergence(graph, x, t, field.divergence_context(graph))
    torch.testing.assert_close(out, field(graph, x, t))
    brute = brute_force_jacobian(lambda z: field(graph, z, t), x).diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(divergence, brute, rtol=1e-10, atol=1e-10)
    _, by_autograd = autograd_divergence(lambda z: field(graph, z, t), x, create_graph=False)
    torch.testing.assert_close(by_autograd, brute, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["softplus", "lipswish", "elu"])
def test_exact_divergence_for_every_activation(activation):
    graph = cycle_graph(4)
    field = _random_field(ChebConv(2, 6, k=2).double(), activation=activation)
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, divergence = field.forward_with_divergence(graph, x, 0.2, field.divergence_context(graph))
    torch.testing.assert_close(divergence, brute_force_jacobian(lambda z: field(graph, z, 0.2), x).diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-10, atol=1e-10)


def test_exact_divergence_is_differentiable_like_brute_force():
    graph = cycle_graph(4)
    field = _random_field(L3Conv(2, 6, graph).double())
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, divergence = field.forward_with_divergence(graph, x, 0.4, field.divergence_context(graph))
    grads = torch.autograd.grad(divergence.sum(), list(field.parameters()), allow_unused=True)
    _, by_autograd = autograd_divergence(lambda z: field(graph, z, 0.4), x, create_graph=True)
    expected = torch.autograd.grad(by_autograd.sum(), list(field.parameters()), allow_unused=True)
    for got, want in zip(grads, expected):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_hutchinson_estimate_is_unbiased_within_three_standard_errors():
    graph = cycle_graph(5)
    field = _random_field(ChebConv(3, 6, k=3).double(), scale=0.6)
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, exact = field.forward_with_divergence(graph, x, 0.1, field.divergence_context(graph))
    generator = torch.Generator().manual_seed(5)
    # One probe per draw, so the spread of the draws is the spread of the estimator itself.
    draws = torch.stack([
        hutchinson_divergence(lambda z: field(graph, z, 0.1), x, make_probes(x, 1, generator), create_graph=False)[1]
        for _ in range(250)
    ])
    standard_error = draws.std(dim=0) / math.sqrt(len(draws))
    assert (standard_error > 0).all()
    assert ((draws.mean(dim=0) - exact).abs() < 3 * standard_error).all(), (draws.mean(0), exact, standard_error)


def test_block_hutchinson_log_det_is_unbiased_for_the_exact_one():
    graph = cycle_graph(4)
    block = JKOBlock(_random_field(NodewiseConv(2, 6).double()), 0.0, 0.6, steps=2, divergence="exact")
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        _, exact = block(graph, x)
        block.set_divergence("hutchinson")
        torch.manual_seed(7)
        draws = torch.stack([block(graph, x)[1] for _ in range(150)])
    standard_error = draws.std(dim=0) / math.sqrt(len(draws))
    assert ((draws.mean(dim=0) - exact).abs() < 3 * standard_error).all()


@pytest.mark.parametrize("conv_name", ["node", "cheb", "l3"])
def test_round_trip_is_below_1e5_in_float64(conv_name):
    graph = cycle_graph(5)
    block = JKOBlock(_random_field(_convs(graph, 2)[conv_name].double()), 0.2, 1.0, steps=8)
    x = torch.randn(5, 6, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with torch.no_grad():
        z, _ = block(graph, x, logdet=False)
    assert (z - x).abs().max() > 0.1  # the map moves the data: the round trip is not trivial
    error = block.round_trip_error(graph, x)
    assert error.shape == (6,)
    assert error.max() < 1e-5


def test_log_det_matches_brute_force_jacobian_of_the_block_map_at_rk4_accuracy():
    graph = cycle_graph(4)
    field = _random_field(L3Conv(2, 6, graph).double(), scale=0.5)
    x = torch.randn(4, 1, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    gaps = []
    for steps in (2, 4, 8):
        block = JKOBlock(field, 0.0, 1.0, steps=steps)
        with torch.no_grad():
            _, logdet = block(graph, x)
        jacobian = torch.autograd.functional.jacobian(lambda z: block(graph, z, logdet=False)[0], x)
        brute = torch.linalg.slogdet(jacobian.reshape(8, 8)).logabsdet
        gaps.append(float((logdet[0] - brute).abs()))
    assert gaps[-1] < 1e-5, gaps
    assert gaps[0] / gaps[-1] > 30, gaps  # ~S^-4: 256 over two doublings; allow pre-asymptotic slack


def test_inverse_log_det_is_minus_the_forward_one():
    graph = cycle_graph(3)
    block = JKOBlock(_random_field(ChebConv(2, 6, k=2).double()), 0.0, 0.5, steps=6)
    x = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    z, forward = block(graph, x)
    back, inverse = block.inverse(graph, z, logdet=True)
    torch.testing.assert_close(inverse, -forward, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(back, x, rtol=1e-6, atol=1e-6)


def test_sample_dimensions_are_kept():
    graph = cycle_graph(3)
    block = JKOBlock(_random_field(NodewiseConv(2, 6).double()), 0.0, 0.5)
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64)
    z, logdet = block(graph, x)
    assert z.shape == x.shape and logdet.shape == (4, 5)
    flat, flat_logdet = block(graph, x.reshape(3, 20, 2))
    torch.testing.assert_close(z.reshape(3, 20, 2), flat)
    torch.testing.assert_close(logdet.reshape(20), flat_logdet)


def test_retime_keeps_the_flow_map_and_split_composes_to_it():
    graph = cycle_graph(4)
    block = JKOBlock(_random_field(ChebConv(2, 6, k=3).double()), 0.5, 1.3, steps=8)
    x = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    with torch.no_grad():
        z, logdet = block(graph, x)
        first, second = block.split()
        middle, first_logdet = first(graph, x)
        composed, second_logdet = second(graph, middle)
        torch.testing.assert_close(composed, z, rtol=0, atol=1e-6)
        torch.testing.assert_close(first_logdet + second_logdet, logdet, rtol=0, atol=1e-6)
        block.retime(2.0, 4.5)
        assert (block.t0, block.t1) == (2.0, 4.5)
        moved, moved_logdet = block(graph, x)
    torch.testing.assert_close(moved, z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moved_logdet, logdet, rtol=1e-12, atol=1e-12)


def test_new_field_is_the_identity_and_extra_state_keeps_float_times():
    spec = FieldSpec(feats=2, conv="node", conv_feats=8, hidden_feats=(8,))
    block = JKOBlock(spec.build(), 0.1, 0.35, steps=2)
    x = torch.randn(1, 3, 2)
    z, logdet = block(make_graph(([0], [0])), x)
    torch.testing.assert_close(z, x)
    assert torch.count_nonzero(logdet) == 0
    block.double()
    state = block.state_dict()
    copy = JKOBlock(spec.build(), 0.0, 1.0).double()
    copy.load_state_dict(state)
    assert (copy.t0, copy.t1, copy.steps) == (0.1, 0.35, 2)


def test_invalid_arguments_raise():
    field = LinearField(torch.eye(2, dtype=torch.float64), 1, 2)
    with pytest.raises(ValueError, match="no exact divergence"):
        JKOBlock(field, 0.0, 1.0, divergence="exact")
    with pytest.raises(ValueError, match="t1 > t0"):
        JKOBlock(field, 1.0, 1.0, divergence="autograd")
    with pytest.raises(ValueError, match="divergence must be"):
        JKOBlock(field, 0.0, 1.0, divergence="trace")
    with pytest.raises(ValueError, match="conv must be"):
        FieldSpec(feats=2, conv="gat")
    with pytest.raises(ValueError, match="needs the graph"):
        FieldSpec(feats=2, conv="l3")
    with pytest.raises(ValueError, match="without an activation"):
        GraphVelocityField(ChebConv(2, 4, k=2, activation=torch.tanh))
    block = JKOBlock(field, 0.0, 1.0, divergence="autograd")
    with pytest.raises(ValueError, match="shape"):
        block(cycle_graph(3), torch.zeros(2, 4, 2, dtype=torch.float64))
