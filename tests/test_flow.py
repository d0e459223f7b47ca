"""GraphFlow: per-block sums, reverse-order inverse, and the whole flow's Jacobian by brute force."""

import torch

from dgl_iflow.graphs import Graph
from dgl_iflow.layers import ChebConv, L3Conv
from dgl_iflow.transforms import FlowOutput, GraphFlow, GraphResidual, InvertibleResBlock
from graphs import make_graph


def small_graph() -> Graph:
    src = torch.tensor([0, 1, 1, 2, 2, 3, 4, 4])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 3, 4])
    return make_graph((src, dst), num_nodes=5)


def make_flow(graph, num_blocks=3, seed=0) -> GraphFlow:
    torch.manual_seed(seed)
    blocks = []
    for i in range(num_blocks):
        conv = ChebConv(2, 6, k=3) if i % 2 == 0 else L3Conv(2, 6, graph, orders=(0, 1))
        residual = GraphResidual(conv, hidden_feats=(5,), lipschitz_coeff=0.8).double()
        with torch.no_grad():
            for p in residual.parameters():
                p.mul_(3.0)  # large enough that the normalization is active
        blocks.append(InvertibleResBlock(residual))
    return GraphFlow(blocks).eval()


def test_sums_equal_per_block_sums():
    g = small_graph()
    flow = make_flow(g)
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    out = flow.forward_with_transport(g, x)
    assert isinstance(out, FlowOutput)
    assert all(torch.equal(a, b) for a, b in zip(flow(g, x), out[:2]))
    h, logdet, transport = x, 0, 0
    for block in flow.blocks:
        cost = block.transport_cost(g, h)
        y, block_logdet = block(g, h)
        torch.testing.assert_close(cost, (y - h).pow(2).sum(dim=(0, -1)))
        h, logdet, transport = y, logdet + block_logdet, transport + cost
    torch.testing.assert_close(out.z, h, rtol=0, atol=0)
    torch.testing.assert_close(out.logdet, logdet, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.transport_cost, transport, rtol=1e-12, atol=1e-12)
    assert out.logdet.shape == out.transport_cost.shape == (4,)


def test_logdet_false_has_no_logdet():
    g = small_graph()
    flow = make_flow(g)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    z, logdet = flow(g, x, logdet=False)
    assert logdet is None
    # Equal up to rounding: the log-det path folds LipSwish's 1/1.1 into the next weight.
    torch.testing.assert_close(z, flow(g, x)[0], rtol=1e-14, atol=1e-14)


def test_inverse_runs_blocks_in_reverse_order():
    g = small_graph()
    flow = make_flow(g)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    z, logdet = flow(g, x)
    recovered, inverse_logdet = flow.inverse(g, z, logdet=True, tol=1e-11)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(recovered, x, rtol=0, atol=1e-6)
    manual = z
    for block in reversed(flow.blocks):
        manual, _ = block.inverse(g, manual, tol=1e-11)
    torch.testing.assert_close(recovered, manual, rtol=0, atol=0)
    forward_order = z
    for block in flow.blocks:  # the wrong order does not invert
        forward_order, _ = block.inverse(g, forward_order, tol=1e-11)
    assert (forward_order - x).abs().max() > 1e-3


def test_flow_logdet_matches_brute_force_jacobian():
    g = small_graph()
    flow = make_flow(g)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    logdet = flow(g, x)[1]
    full = torch.autograd.functional.jacobian(lambda h: flow(g, h, logdet=False)[0], x)
    per_sample = torch.stack([full[:, s, :, :, s, :].reshape(10, 10) for s in range(3)])
    torch.testing.assert_close(logdet, torch.logdet(per_sample), rtol=1e-8, atol=1e-8)
    assert logdet.abs().min() > 1e-2


def test_estimator_mode_switch_and_empty_flow():
    g = small_graph()
    flow = make_flow(g, num_blocks=2)
    flow.set_logdet_mode("estimator")
    assert all(block.logdet_mode == "estimator" for block in flow.blocks)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        _, logdet = flow(g, x)
    assert logdet.shape == (3,) and not logdet.requires_grad
    identity = GraphFlow([])
    z, logdet = identity(g, x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(3, dtype=x.dtype))
    back, logdet = identity.inverse(g, x, logdet=True)
    assert torch.equal(back, x) and torch.equal(logdet, torch.zeros(3, dtype=x.dtype))
