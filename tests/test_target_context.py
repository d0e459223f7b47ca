"""The target-context law, H_v | Y ~ N(A Y_v + b + sum_u C_uv Y_u, sigma^2 I), against dense forms."""
import pytest
import torch

from dgl_iflow import IGNN
from dgl_iflow.latents import LAWS, LinearGaussianLatent, TargetContextLatent

from graphs import cycle_graph

V, D = 3, 2


def _law(label_dim: int | None = 2) -> TargetContextLatent:
    generator = torch.Generator().manual_seed(0)
    law = TargetContextLatent(D, V, label_dim=label_dim, sigma=0.6, trainable=True).double()
    with torch.no_grad():
        for parameter in law.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    q = 1 if label_dim is None else label_dim
    mixing = torch.randn(V * q, V * q, generator=generator, dtype=torch.float64)
    targets = (torch.randn(400, V * q, generator=generator, dtype=torch.float64) @ mixing + 1.0).reshape(400, V, q)
    law.fit_before_training(targets.squeeze(-1) if label_dim is None else targets)
    return law


def _written_out_mean(law: TargetContextLatent, y: torch.Tensor) -> torch.Tensor:
    """``(V d,)`` latent mean of one target vector ``(V, q)``, node by node, from the formula."""
    rows = []
    for v in range(V):
        mean = law.weight @ y[v] + law.bias
        for u in range(V):
            mean = mean + law.context[u, :, v].T @ y[u]
        rows.append(mean)
    return torch.cat(rows).detach()


@pytest.mark.parametrize("label_dim", [None, 2])
def test_centers_and_log_prob_are_the_written_out_gaussian(label_dim):
    law = _law(label_dim)
    q = 1 if label_dim is None else label_dim
    y = 3 * torch.randn(4, V, q, dtype=torch.float64)
    labels = y.squeeze(-1) if label_dim is None else y
    h = torch.randn(4, V, D, dtype=torch.float64)
    for row in range(4):
        mean = _written_out_mean(law, y[row])
        torch.testing.assert_close(law.centers(labels[row]).flatten().detach(), mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(law.mean_map().detach() @ y[row].flatten() + law.bias.repeat(V).detach(), mean,
                                   rtol=0, atol=1e-12)
        dense = torch.distributions.MultivariateNormal(mean, 0.36 * torch.eye(V * D, dtype=torch.float64))
        torch.testing.assert_close(law.log_prob(h[row], labels[row]).detach(), dense.log_prob(h[row].flatten()),
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("label_dim", [None, 2])
def test_posterior_is_the_conditional_of_the_joint_gaussian_of_all_targets_and_latents(label_dim):
    """Schur complement of the joint law of (vec Y, vec H), with the joint prior fitted to the targets."""
    law = _law(label_dim)
    q = 1 if label_dim is None else label_dim
    h = torch.randn(5, V, D, dtype=torch.float64)
    mean, cov = law.posterior_moments(h)
    m, s = law.joint_prior_mean, law.joint_prior_cov
    # The map, column by column, from the law's centers: the mean is affine in the targets.
    zero = torch.zeros(V, q, dtype=torch.float64)
    offset = law.centers(zero.squeeze(-1) if label_dim is None else zero).flatten().detach()
    columns = []
    for j in range(V * q):
        unit = torch.zeros(V * q, dtype=torch.float64)
        unit[j] = 1.0
        unit = unit.reshape(V, q)
        columns.append(law.centers(unit.squeeze(-1) if label_dim is None else unit).flatten().detach() - offset)
    mean_map = torch.stack(columns, 1)
    gain = s @ mean_map.T @ torch.linalg.inv(mean_map @ s @ mean_map.T + 0.36 * torch.eye(V * D, dtype=torch.float64))
    expected_mean = m + (h.flatten(1) - mean_map @ m - offset) @ gain.T
    expected_cov = s - gain @ mean_map @ s
    torch.testing.assert_close(mean.flatten(1).detach(), expected_mean, rtol=0, atol=1e-9)
    for v in range(V):
        block = expected_cov[v * q:(v + 1) * q, v * q:(v + 1) * q]
        torch.testing.assert_close(cov[0, v].detach(), block, rtol=0, atol=1e-9)
    # The prior is the training targets' joint mean and covariance.
    assert s.shape == (V * q, V * q) and not torch.allclose(s, torch.diag(s.diagonal()))


def test_a_zero_context_is_the_linear_gaussian_law_but_for_the_joint_prior():
    law = TargetContextLatent(D, V, label_dim=None, sigma=0.8, trainable=True).double()
    plain = LinearGaussianLatent(D, V, label_dim=None, sigma=0.8, trainable=True).double()
    y = torch.randn(50, V, dtype=torch.float64) * 2 + 1  # independent nodes: the joint prior is near diagonal
    law.fit_before_training(y)
    plain.fit_before_training(y)
    h = law.sample(y[:6], generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(law.log_prob(h, y[:6]), plain.log_prob(h, y[:6]), rtol=0, atol=0)
    # With the prior's off-diagonal terms removed the two posteriors agree.
    with torch.no_grad():
        law.joint_prior_cov.copy_(torch.diag(law.joint_prior_cov.diagonal()))
        plain.prior_cov.copy_(law.joint_prior_cov.diagonal().reshape(V, 1, 1))
    torch.testing.assert_close(law.posterior_mean(h), plain.posterior_mean(h), rtol=0, atol=1e-10)


def test_an_ignn_builds_it_by_name_and_learns_the_context():
    model = IGNN(cycle_graph(V), D, latent="target_context", num_blocks=1, hidden_feats=(8,)).double()
    assert LAWS["target_context"] is TargetContextLatent and isinstance(model.latent, TargetContextLatent)
    x, y = torch.randn(8, V, D, dtype=torch.float64), torch.randn(8, V, dtype=torch.float64)
    model.log_prob(model.graph, x, y).sum().backward()
    assert model.latent.context.grad.abs().max() > 0


def test_trained_in_float32_it_predicts_through_the_readout_and_its_posterior():
    from dgl_iflow.training import TrainConfig, fit

    torch.manual_seed(0)
    model = IGNN(cycle_graph(V), D, latent="target_context", num_blocks=1, hidden_feats=(8,), trainable_means=True)
    generator = torch.Generator().manual_seed(1)
    y = torch.randn(90, V, generator=generator)
    x = torch.stack([y + y.roll(1, 1), y - y.roll(1, 1)], -1) + 0.3 * torch.randn(90, V, D, generator=generator)
    fit(model, model.graph, x, y, TrainConfig(epochs=3, batch_size=30, lr=1e-2, progress=False))
    assert model.latent.context.abs().max() > 0  # the context moved from its zero start
    posterior = model.predict(model.graph, x)
    assert posterior.dtype == torch.float32 and posterior.shape == (90, V)
    assert float((posterior - y).pow(2).mean()) < float(y.var())
    model.fit_readout(model.graph, x, y)
    lower, upper = model.predict_interval(model.graph, x, 0.9)
    assert lower.dtype == torch.float32 and bool((lower < upper).all())
