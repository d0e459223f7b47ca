"""GraphResidual: assembled Jacobian vs autograd brute force; spectral normalization."""

import pickle

import pytest
import torch

from dgl_iflow.graphs import Graph
from dgl_iflow.layers import ChebConv, L3Conv
from dgl_iflow.transforms import GraphResidual
from dgl_iflow.layers.graph_operator import DENSE_MAX_NODES, DENSE_MAX_NODES_LEARNABLE
from graphs import brute_force_jacobian, make_graph


def small_graph() -> Graph:
    src = torch.tensor([0, 1, 1, 2, 2, 3, 3, 4, 0, 4, 1])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 4, 3, 4, 0, 1])
    return make_graph((src, dst), num_nodes=5)


def make_conv(kind: str, graph, in_feats=2, out_feats=6):
    """``kind`` is ``cheb`` or ``l3``, with ``+mean`` for the graph-mean operator."""
    graph_mean = kind.endswith("+mean")
    if kind.startswith("cheb"):
        return ChebConv(in_feats, out_feats, k=3, graph_mean=graph_mean)
    return L3Conv(in_feats, out_feats, graph, orders=(0, 1, 2), graph_mean=graph_mean)


def make_residual(kind, graph, hidden=(7,), activation="lipswish", seed=0, **kwargs):
    torch.manual_seed(seed)
    residual = GraphResidual(make_conv(kind, graph), hidden_feats=hidden, activation=activation, **kwargs).double()
    with torch.no_grad():  # non-trivial biases and beta
        for module in residual.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, 0.5)
            if hasattr(module, "raw_beta"):
                module.raw_beta.normal_()
    return residual


@pytest.mark.parametrize("kind", ["cheb", "l3", "cheb+mean", "l3+mean"])
@pytest.mark.parametrize("activation", ["lipswish", "elu"])
@pytest.mark.parametrize("hidden", [(), (7,), (5, 3)])
@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
def test_jacobian_matches_brute_force(kind, activation, hidden, batch):
    g = small_graph()
    residual = make_residual(kind, g, hidden, activation)
    x = torch.randn(5, *batch, 2, dtype=torch.float64)
    out, jac = residual.forward_with_jacobian(g, x)
    torch.testing.assert_close(out, residual(g, x), rtol=0, atol=1e-14)
    assert jac.shape == (*batch, 10, 10)
    torch.testing.assert_close(jac, brute_force_jacobian(lambda z: residual(g, z), x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["cheb", "l3+mean"])
@pytest.mark.parametrize("activation", ["tanh", "softplus"])
@pytest.mark.parametrize("hidden", [(), (5, 3)])
def test_jacobian_without_fused_kernel_matches_brute_force(kind, activation, hidden):
    """Activations without a hand-written kernel go through their value_and_derivative."""
    g = small_graph()
    residual = make_residual(kind, g, hidden, activation)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    out, jac = residual.forward_with_jacobian(g, x)
    torch.testing.assert_close(out, residual(g, x), rtol=0, atol=1e-14)
    torch.testing.assert_close(jac, brute_force_jacobian(lambda z: residual(g, z), x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["cheb", "l3", "l3+mean"])
@pytest.mark.parametrize("activation", ["lipswish", "elu"])
@pytest.mark.parametrize("hidden", [(), (4,), (4, 3)])
def test_jacobian_gradients_by_finite_differences(kind, activation, hidden):
    """The hand-written backward of the assembled Jacobian (activation second derivatives,
    LipSwish slopes, folded 1/1.1 scale) against central differences, for every parameter
    and the input, through both outputs."""
    g = small_graph()
    residual = make_residual(kind, g, hidden, activation)
    x = torch.randn(5, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert _gradcheck(_WithJacobian(residual), g, x)


def _gradcheck(wrapper: torch.nn.Module, g, x: torch.Tensor) -> bool:
    """``gradcheck`` of ``wrapper(g, x)`` with respect to ``x`` and every parameter."""
    names = [name for name, _ in wrapper.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in wrapper.parameters())

    def outputs(x_in, *tensors):
        return torch.func.functional_call(wrapper, dict(zip(names, tensors)), (g, x_in))

    return torch.autograd.gradcheck(outputs, (x.clone().requires_grad_(True), *params))


class _WithJacobian(torch.nn.Module):
    def __init__(self, residual: GraphResidual) -> None:
        super().__init__()
        self.residual = residual

    def forward(self, graph, x):
        return self.residual.forward_with_jacobian(graph, x)


def sparse_cycle() -> Graph:
    """A cycle with more nodes than both dense thresholds: every operator is sparse."""
    num_nodes = max(DENSE_MAX_NODES, DENSE_MAX_NODES_LEARNABLE) + 4
    src = torch.arange(num_nodes)
    return make_graph((torch.cat([src, (src + 1) % num_nodes]), torch.cat([(src + 1) % num_nodes, src])))


def test_jacobian_on_sparse_path():
    """Sparse operators (both thresholds passed): rows of the assembled Jacobian vs autograd VJPs."""
    g = sparse_cycle()
    num_nodes = g.num_nodes()
    for kind in ("cheb", "l3"):
        residual = make_residual(kind, g, (4,))
        x = torch.randn(num_nodes, 2, 2, dtype=torch.float64, requires_grad=True)
        _, jac = residual.forward_with_jacobian(g, x)  # (2, 2V, 2V)
        out = residual(g, x)
        for _ in range(3):
            cotangent = torch.randn_like(out)
            (vjp,) = torch.autograd.grad(out, x, cotangent, retain_graph=True)
            expected = torch.einsum("bn,bnm->bm", cotangent.transpose(0, 1).reshape(2, -1), jac)
            torch.testing.assert_close(vjp.transpose(0, 1).reshape(2, -1), expected, rtol=1e-10, atol=1e-10)


def test_feats_and_shape_and_conv_activation():
    g = small_graph()
    residual = make_residual("cheb", g)
    assert residual.feats == 2
    assert residual(g, torch.randn(5, 4, 2, dtype=torch.float64)).shape == (5, 4, 2)
    with pytest.raises(ValueError, match="without an activation"):
        GraphResidual(ChebConv(2, 4, k=2, activation=torch.tanh))


def test_invalid_lipschitz_options():
    g = small_graph()
    for coeff in (0.0, 1.0, 1.5, -0.3):
        with pytest.raises(ValueError, match="lipschitz_coeff"):
            GraphResidual(make_conv("cheb", g), lipschitz_coeff=coeff)
    with pytest.raises(ValueError, match="n_power_iterations"):
        GraphResidual(make_conv("cheb", g), lipschitz_coeff=0.5, n_power_iterations=0)


def blown_up(kind, graph, coeff, hidden=(8,), factor=10.0, **kwargs):
    residual = make_residual(kind, graph, hidden, lipschitz_coeff=coeff, **kwargs)
    with torch.no_grad():
        for name, p in residual.named_parameters():
            if name.endswith("weight") or name.endswith("filter_values"):
                p.mul_(factor)
    return residual


def exact_layer_norms(residual, graph):
    """Spectral norms of the scaled layers, computed here from dense matrices."""
    with torch.no_grad():
        conv_scale, scales = residual.layer_scales(graph)
        bases = residual.conv.operator_matrices(graph)
        weight = residual.conv.weight
        v = bases.shape[1]
        conv_matrix = torch.einsum("kvu,kio->voui", bases, weight).reshape(v * weight.shape[2], v * weight.shape[1])
        norms = [torch.linalg.matrix_norm(conv_matrix * conv_scale, ord=2).item()]
        norms += [torch.linalg.matrix_norm(lin.weight * s, ord=2).item() for lin, s in zip(residual.linears, scales)]
    return norms


@pytest.mark.parametrize("kind", ["cheb", "l3", "cheb+mean"])
@pytest.mark.parametrize("hidden", [(), (8,), (8, 8)])
def test_spectral_normalization_bounds_jacobian(kind, hidden):
    g = small_graph()
    coeff = 0.7
    residual = blown_up(kind, g, coeff, hidden)
    residual.eval()
    norms = exact_layer_norms(residual, g)
    for norm in norms:
        assert norm <= coeff * (1 + 1e-5)
    assert max(norms) >= coeff * (1 - 1e-5)  # the weights were large: every layer is scaled down to c
    assert residual.lipschitz_bound(g) <= coeff * (1 + 1e-5)
    x = 3 * torch.randn(5, 2, 2, dtype=torch.float64)
    _, jac = residual.forward_with_jacobian(g, x)
    torch.testing.assert_close(jac, brute_force_jacobian(lambda z: residual(g, z), x), rtol=1e-10, atol=1e-10)
    assert torch.linalg.matrix_norm(jac, ord=2).max().item() <= coeff + 1e-6


def test_spectral_normalization_leaves_small_layers_alone():
    g = small_graph()
    plain = make_residual("cheb", g, (8,))
    normalized = make_residual("cheb", g, (8,), lipschitz_coeff=0.9)
    with torch.no_grad():
        for module in (plain, normalized):
            for lin in module.linears:
                lin.weight.mul_(0.01)
            module.conv.weight.mul_(0.01)
    conv_scale, scales = normalized.layer_scales(g)
    assert float(conv_scale) == 1.0 and all(float(s) == 1.0 for s in scales)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(normalized(g, x), plain(g, x), rtol=0, atol=1e-15)


def test_spectral_normalization_gradient_in_eval_mode():
    """With frozen singular vectors g is smooth in the weights: finite differences agree."""
    g = small_graph()
    residual = blown_up("l3", g, 0.6, (4,))
    residual.eval()
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    names = ["conv.weight", "conv.filter_values", "linears.0.weight"]
    params = {name: p.detach().clone().requires_grad_(True) for name, p in residual.named_parameters() if name in names}

    def apply(*tensors):
        return torch.func.functional_call(residual, dict(zip(params, tensors)), (g, x))

    residual(g, x)  # start the vectors before gradcheck
    assert torch.autograd.gradcheck(apply, tuple(params.values()))


def test_power_iteration_advances_only_when_training_with_grad():
    g = small_graph()
    residual = blown_up("cheb", g, 0.8, (6,))
    x = torch.randn(5, 2, dtype=torch.float64)
    residual(g, x)
    snapshot = {k: v.clone() for k, v in residual._buffers.items()}

    def unchanged():
        return all(torch.equal(snapshot[k], v) for k, v in residual._buffers.items())

    with torch.no_grad():
        residual(g, x)
    assert unchanged()
    residual.eval()
    residual(g, x)
    assert unchanged()
    residual.train()
    with residual.frozen_normalization():
        residual(g, x)
    assert unchanged()
    # the warm-up already converged; a training step moves the vectors by rounding only
    residual(g, x)
    for key, value in residual._buffers.items():
        torch.testing.assert_close(value.abs(), snapshot[key].abs(), rtol=1e-4, atol=1e-4)


def test_training_tracks_weight_changes():
    """After the weights change, a few training-mode forwards bring the bound back to c."""
    g = small_graph()
    coeff = 0.5
    residual = blown_up("l3", g, coeff, (6,), n_power_iterations=3)
    residual(g, torch.randn(5, 2, dtype=torch.float64))
    with torch.no_grad():
        for p in residual.parameters():
            p.add_(0.3 * torch.randn_like(p))
    for _ in range(30):
        residual(g, torch.randn(5, 2, dtype=torch.float64))
    assert max(exact_layer_norms(residual, g)) <= coeff * (1 + 1e-3)


def test_normalization_state_round_trips():
    g = small_graph()
    residual = blown_up("cheb", g, 0.8, (6,))
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    residual.eval()
    out = residual(g, x)
    clone = pickle.loads(pickle.dumps(residual))
    torch.testing.assert_close(clone(g, x), out, rtol=0, atol=0)
    fresh = make_residual("cheb", g, (6,), lipschitz_coeff=0.8, seed=5).eval()
    fresh(g, x)  # its own convolution vectors, converged for other weights, must not survive the load
    fresh.load_state_dict(residual.state_dict())
    torch.testing.assert_close(fresh(g, x), out, rtol=0, atol=0)
    # A state dict without the vectors (older checkpoints): they restart and converge to the same sigma.
    old = {key: value for key, value in residual.state_dict().items() if not key.endswith("_extra_state")}
    restarted = make_residual("cheb", g, (6,), lipschitz_coeff=0.8, seed=5).eval()
    restarted(g, x)
    restarted.load_state_dict(old)
    assert restarted._sn_conv_right.numel() == 0
    torch.testing.assert_close(restarted(g, x), out, rtol=1e-6, atol=1e-6)


def test_conv_vectors_restart_for_another_graph_size():
    g = small_graph()
    residual = blown_up("cheb", g, 0.8, (6,))
    residual(g, torch.randn(5, 2, dtype=torch.float64))
    bigger = make_graph(([0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 0]))
    residual(bigger, torch.randn(7, 2, dtype=torch.float64))
    assert residual._sn_conv_right.shape == (7, 2)
    assert max(exact_layer_norms(residual, bigger)) <= 0.8 * (1 + 1e-5)


def _dense_product(jac: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``J v`` from the Jacobian ``(*, V D, V D)`` for ``vector`` ``(V, *, D)``."""
    flat = vector.movedim(0, -2).flatten(-2)
    return (jac @ flat.unsqueeze(-1)).squeeze(-1).unflatten(-1, (vector.shape[0], vector.shape[-1])).movedim(-2, 0)


@pytest.mark.parametrize("kind", ["cheb", "l3", "l3+mean"])
@pytest.mark.parametrize("activation", ["lipswish", "elu", "tanh"])
@pytest.mark.parametrize("hidden", [(), (5, 3)])
@pytest.mark.parametrize("batch", [(3,), (2, 2)])
def test_jacobian_vector_products_match_brute_force(kind, activation, hidden, batch):
    g = small_graph()
    residual = make_residual(kind, g, hidden, activation)
    x = torch.randn(5, *batch, 2, dtype=torch.float64)
    vector = torch.randn_like(x)
    out, jvp = residual.forward_with_jvp(g, x)
    torch.testing.assert_close(out, residual(g, x), rtol=0, atol=1e-14)
    expected = _dense_product(brute_force_jacobian(lambda z: residual(g, z), x), vector)
    for differentiable in (True, False):
        product = jvp(vector, differentiable)
        assert product.shape == x.shape and product.requires_grad == differentiable
        torch.testing.assert_close(product, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="input's shape"):
        jvp(vector[:, :1], True)


@pytest.mark.parametrize("kind", ["cheb", "l3+mean"])
@pytest.mark.parametrize("activation", ["lipswish", "elu"])
@pytest.mark.parametrize("hidden", [(4,), (4, 3)])
def test_jacobian_vector_product_gradients_by_finite_differences(kind, activation, hidden):
    """What the estimator's gradient differentiates: J v with respect to every parameter and x."""
    g = small_graph()
    residual = make_residual(kind, g, hidden, activation)
    x = torch.randn(5, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    vector = torch.randn(5, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert _gradcheck(_WithJacobianVectorProduct(residual, vector), g, x)


class _WithJacobianVectorProduct(torch.nn.Module):
    def __init__(self, residual: GraphResidual, vector: torch.Tensor) -> None:
        super().__init__()
        self.residual, self.vector = residual, vector

    def forward(self, graph, x):
        out, jvp = self.residual.forward_with_jvp(graph, x)
        return out, jvp(self.vector, True)


def test_jacobian_vector_products_on_sparse_path():
    g = sparse_cycle()
    num_nodes = g.num_nodes()
    for kind in ("cheb", "l3"):
        residual = make_residual(kind, g, (4,))
        x = torch.randn(num_nodes, 2, 2, dtype=torch.float64)
        vector = torch.randn_like(x)
        _, jac = residual.forward_with_jacobian(g, x)
        _, jvp = residual.forward_with_jvp(g, x)
        torch.testing.assert_close(jvp(vector, True), _dense_product(jac, vector), rtol=1e-10, atol=1e-10)
