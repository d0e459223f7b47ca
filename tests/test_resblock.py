"""InvertibleResBlock: inverse, exact and estimated log-dets and their gradients, bad input."""

import math
import warnings

import pytest
import torch

from dgl_iflow.graphs import Graph
from dgl_iflow.layers import ChebConv, L3Conv
from dgl_iflow.transforms import GraphResidual, InversionError, InversionWarning, InvertibleResBlock
from graphs import brute_force_jacobian, make_graph


def small_graph() -> Graph:
    src = torch.tensor([0, 1, 1, 2, 2, 3, 3, 0, 1])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 0, 3, 1])
    return make_graph((src, dst), num_nodes=4)


def layer_norm_bound(residual, graph) -> float:
    """prod of spectral norms of the conv (as a (V H0, V D) matrix) and the linear layers."""
    with torch.no_grad():
        bases = residual.conv.operator_matrices(graph)
        weight = residual.conv.weight
        v = bases.shape[1]
        conv = torch.einsum("kvu,kio->voui", bases, weight).reshape(v * weight.shape[2], v * weight.shape[1])
        bound = torch.linalg.matrix_norm(conv, ord=2).item()
        for linear in residual.linears:
            bound *= torch.linalg.matrix_norm(linear.weight, ord=2).item()
    return bound


def make_block(kind="cheb", lip=0.3, hidden=(5,), seed=0, graph=None, aligned=False, **options) -> InvertibleResBlock:
    """A float64 block whose residual has Lip(g) <= lip (activations are 1-Lipschitz).

    ``aligned`` (with ``hidden=()``) sets the output layer to the node-wise (k = 0)
    conv weight, so that the Jacobian has a clearly positive trace and log-det.
    """
    graph = small_graph() if graph is None else graph
    torch.manual_seed(seed)
    conv = ChebConv(2, 6, k=3) if kind == "cheb" else L3Conv(2, 6, graph, orders=(0, 1, 2))
    residual = GraphResidual(conv, hidden_feats=hidden).double()
    with torch.no_grad():
        for module in residual.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, 0.3)
        if aligned:
            residual.linears[-1].weight.copy_(conv.weight[0])
        residual.linears[-1].weight.mul_(lip / layer_norm_bound(residual, graph))
    return InvertibleResBlock(residual, **options)


@pytest.mark.parametrize("kind", ["cheb", "l3"])
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_inverse_recovers_input(kind, batch):
    g = small_graph()
    block = make_block(kind, lip=0.7)
    x = torch.randn(4, *batch, 2, dtype=torch.float64)
    y, logdet = block(g, x)
    assert y.shape == x.shape and logdet.shape == batch
    torch.testing.assert_close(block.inverse(g, y, tol=1e-10)[0], x, rtol=0, atol=1e-5)
    assert 1 < block.last_inverse_iterations < 200


@pytest.mark.parametrize("kind", ["cheb", "l3"])
def test_exact_logdet_matches_brute_force(kind):
    g = small_graph()
    block = make_block(kind, lip=0.9, hidden=(), aligned=True)
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    _, logdet = block(g, x)
    expected = torch.logdet(brute_force_jacobian(lambda z: block(g, z, logdet=False)[0], x))
    torch.testing.assert_close(logdet, expected, rtol=1e-6, atol=1e-6)
    assert expected.abs().min() > 1e-2  # not trivially zero


def _estimator_means(block, g, x_one, calls, seed):
    torch.manual_seed(seed)
    means = []
    for _ in range(calls):
        x = x_one.expand(-1, 32, -1).clone()  # 32 replicas of one sample: a batch of independent probes
        means.append(block(g, x)[1].mean().detach())
    return torch.stack(means)


@pytest.mark.parametrize("kind", ["cheb", "l3"])
def test_estimator_mean_within_three_standard_errors(kind):
    g = small_graph()
    block = make_block(kind, lip=0.4, hidden=(), aligned=True, logdet="estimator")
    x = torch.randn(4, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    block.set_logdet_mode("exact")
    exact = block(g, x)[1].item()
    block.set_logdet_mode("estimator")
    means = _estimator_means(block, g, x, 200, seed=2)
    se = means.std().item() / math.sqrt(len(means))
    assert abs(means.mean().item() - exact) <= 3 * se, (means.mean().item(), exact, se)
    assert se < abs(exact) / 5


def _flat_grad(block, loss):
    params = [p for p in block.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1) for p, gr in zip(params, grads)])


@pytest.mark.parametrize("kind", ["cheb", "l3"])
def test_exact_logdet_gradient_by_finite_differences(kind):
    g = small_graph()
    block = make_block(kind, lip=0.8)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    names = [name for name, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in block.parameters())

    def logdet(*tensors):
        return torch.func.functional_call(block, dict(zip(names, tensors)), (g, x))[1]

    assert torch.autograd.gradcheck(logdet, params)
    # and with respect to the input
    assert torch.autograd.gradcheck(lambda z: block(g, z)[1], (x.clone().requires_grad_(True),))


@pytest.mark.parametrize("neumann", [True, False])
def test_estimator_gradient_unbiased(neumann):
    g = small_graph()
    block = make_block("cheb", lip=0.4, hidden=(), aligned=True, neumann_gradient=neumann)
    x = torch.randn(4, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x_rep = x.expand(-1, 32, -1).clone()
    exact = _flat_grad(block, block(g, x_rep)[1].mean())
    block.set_logdet_mode("estimator")
    torch.manual_seed(4)
    grads = torch.stack([_flat_grad(block, block(g, x_rep)[1].mean()) for _ in range(200)])
    directions = torch.randn(4, exact.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    projected, target = grads @ directions.T, directions @ exact
    se = projected.std(dim=0) / math.sqrt(len(grads))
    assert ((projected.mean(dim=0) - target).abs() <= 3 * se).all(), (projected.mean(0), target, se)
    assert (se < target.abs() / 3).all()


def test_eval_mode_estimator_is_detached():
    g = small_graph()
    block = make_block("l3", lip=0.3, logdet="estimator").eval()
    x = torch.randn(4, 16, 2, dtype=torch.float64)
    with torch.no_grad():
        y, logdet = block(g, x)
    assert not y.requires_grad and not logdet.requires_grad and logdet.grad_fn is None
    assert logdet.shape == (16,) and torch.isfinite(logdet).all()
    with torch.no_grad():
        y_plain, _ = block(g, x, logdet=False)
    torch.testing.assert_close(y, y_plain, rtol=1e-14, atol=1e-14)  # the fused chain rounds differently
    # an input that requires grad under no_grad works too
    with torch.no_grad():
        _, logdet2 = block(g, x.clone().requires_grad_(True))
    assert not logdet2.requires_grad


def test_logdet_false_and_transport_cost():
    g = small_graph()
    block = make_block("cheb")
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    y, logdet = block(g, x, logdet=False)
    assert logdet is None
    torch.testing.assert_close(block.transport_cost(g, x), (y - x).pow(2).sum(dim=(0, -1)))


def test_bad_input():
    g = small_graph()
    block = make_block("cheb")
    for bad in (torch.randn(4, 3, 3, dtype=torch.float64), torch.randn(5, 3, 2, dtype=torch.float64),
                torch.randn(4, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"must have shape \(V, \*, 2\) with V = 4 nodes"):
            block(g, bad)
        with pytest.raises(ValueError, match=r"must have shape \(V, \*, 2\) with V = 4 nodes"):
            block.inverse(g, bad)
    y = torch.randn(4, 3, 2, dtype=torch.float64)
    y[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="holds 1 NaN or infinite values"):
        block.inverse(g, y)
    with pytest.raises(ValueError, match="on_failure"):
        block.inverse(g, torch.zeros(4, 2, dtype=torch.float64), on_failure="ignore")
    with pytest.raises(ValueError, match="max_iter"):
        block.inverse(g, torch.zeros(4, 2, dtype=torch.float64), max_iter=0)
    with pytest.raises(ValueError, match="logdet must be one of"):
        block.set_logdet_mode("approximate")


def test_non_convergence_raises_or_warns():
    g = small_graph()
    block = make_block("cheb", lip=0.3)
    with torch.no_grad():  # Lip(g) far above 1
        block.residual.conv.weight.mul_(200.0)
    y = torch.randn(4, 3, 2, dtype=torch.float64)
    with pytest.raises(InversionError) as info:
        block.inverse(g, y, max_iter=25)
    err = info.value
    assert err.residual > 1e-6 and 1 <= err.iterations <= 25
    assert f"{err.residual:.3e}" in str(err) and "Lip(g)" in str(err)
    with pytest.warns(InversionWarning, match="relative residual"):
        x, _ = block.inverse(g, y, max_iter=25, on_failure="warn")
    assert x.shape == y.shape


def test_spectral_normalized_block_inverts_despite_large_weights():
    g = small_graph()
    torch.manual_seed(6)
    residual = GraphResidual(ChebConv(2, 8, k=3), (8,), lipschitz_coeff=0.9).double()
    with torch.no_grad():
        for p in residual.parameters():
            p.mul_(30.0)
    block = InvertibleResBlock(residual)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    y, logdet = block(g, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(block.inverse(g, y, tol=1e-10)[0], x, rtol=0, atol=1e-6)
    jac = brute_force_jacobian(lambda z: block(g, z, logdet=False)[0], x) - torch.eye(8, dtype=torch.float64)
    assert torch.linalg.matrix_norm(jac, ord=2).max().item() <= 0.9 + 1e-6
    torch.testing.assert_close(logdet, torch.logdet(jac + torch.eye(8, dtype=torch.float64)), rtol=1e-8, atol=1e-8)
