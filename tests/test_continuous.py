"""IGNN with real-valued node targets (the law ``"linear_gaussian"``): densities, generation,
prediction, training and checkpoints against brute force and the law's closed forms."""
import pytest
import torch

from dgl_iflow import IGNN
from dgl_iflow.models import JKOFlow
from dgl_iflow.training import TrainConfig, fit

from graphs import cycle_graph

V, D = 3, 2


def _model(label_dim: int | None = None, seed: int = 0) -> IGNN:
    """A tiny float64 model of real-valued targets, its flow off the identity and its map trainable."""
    torch.manual_seed(seed)
    model = IGNN(cycle_graph(V), D, latent="linear_gaussian", label_dim=label_dim, num_blocks=2, hidden_feats=(8,),
                 init_scale=1.0, logdet="exact", sigma=0.8, trainable_means=True).double()
    with torch.no_grad():
        model.latent.bias.normal_()
    return model


def _targets(n: int, label_dim: int | None = None, seed: int = 1) -> torch.Tensor:
    shape = (n, V) if label_dim is None else (n, V, label_dim)
    return 2 * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _data(n: int, label_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features that move with the targets: node ``v``'s features are its targets' sum plus noise."""
    y = _targets(n, label_dim)
    signal = y if label_dim is None else y.sum(-1)
    noise = torch.randn(n, V, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return signal.unsqueeze(-1) + 0.5 * noise, y


@pytest.mark.parametrize("label_dim", [None, 2])
def test_log_prob_is_the_latent_gaussian_plus_the_brute_force_log_det(label_dim):
    model = _model(label_dim)
    graph = model.graph
    x, y = _data(4, label_dim)
    log_prob = model.log_prob(graph, x, y)
    for row in range(4):
        def flat_flow(flat: torch.Tensor) -> torch.Tensor:
            return model.encode(graph, flat.reshape(1, V, D), logdet=False)[0].flatten()

        jacobian = torch.autograd.functional.jacobian(flat_flow, x[row].flatten())
        h = flat_flow(x[row].flatten())
        targets = y[row].reshape(V, -1)
        mean = (targets @ model.latent.weight.T + model.latent.bias).flatten()
        gaussian = torch.distributions.MultivariateNormal(mean, 0.8**2 * torch.eye(V * D, dtype=torch.float64))
        expected = gaussian.log_prob(h) + torch.linalg.slogdet(jacobian)[1]
        torch.testing.assert_close(log_prob[row], expected.detach(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("label_dim", [None, 2])
def test_sample_inverts_latents_drawn_given_any_real_target(label_dim):
    model = _model(label_dim)
    # Far outside anything seen: generation is defined for every real target.
    y = torch.tensor([[-7.5], [0.25], [12.0]], dtype=torch.float64).expand(V, label_dim or 1)
    y = y[:, 0] if label_dim is None else y
    x = model.sample(model.graph, y, 5, generator=torch.Generator().manual_seed(3), tol=1e-11, max_iter=5000)
    h = model.latent.sample(y, 5, generator=torch.Generator().manual_seed(3))
    assert x.shape == (5, V, D) and x.dtype == torch.float64
    torch.testing.assert_close(model.encode(model.graph, x, logdet=False)[0], h, rtol=0, atol=1e-8)


@pytest.mark.parametrize("label_dim", [None, 2])
def test_predict_is_the_law_posterior_of_the_latent(label_dim):
    model = _model(label_dim)
    x, y = _data(30, label_dim)
    model.latent.fit_before_training(y)
    h = model.encode(model.graph, x, logdet=False)[0]
    prediction = model.predict(model.graph, x)
    assert prediction.shape == y.shape
    torch.testing.assert_close(prediction, model.latent.posterior_mean(h), rtol=0, atol=0)
    lower, upper = model.predict_interval(model.graph, x, level=0.8)
    expected_lower, expected_upper = model.latent.posterior_interval(h, 0.8)
    torch.testing.assert_close(lower, expected_lower, rtol=0, atol=0)
    torch.testing.assert_close(upper, expected_upper, rtol=0, atol=0)
    assert (lower < prediction).all() and (prediction < upper).all()


@pytest.mark.parametrize("label_dim", [None, 2])
def test_fit_two_epochs_on_float_targets_lowers_the_nll_and_round_trips_a_checkpoint(label_dim, tmp_path):
    model = _model(label_dim)
    graph = model.graph
    x, y = _data(120, label_dim)
    with torch.no_grad():
        before = float(-model.log_prob(graph, x, y).mean())
    # Targets as users hold them: a float32 NumPy array.
    history = fit(model, graph, x, y.float().numpy(), TrainConfig(epochs=2, batch_size=20, lr=1e-2, progress=False))
    with torch.no_grad():
        after = float(-model.log_prob(graph, x, y).mean())
    assert after < before and "ce" not in history.last()
    # The prior of the posterior is the training targets' mean and covariance.
    torch.testing.assert_close(model.latent.prior_mean, y.reshape(120, V, -1).mean(0))

    path = tmp_path / "continuous.pt"
    model.save(path)
    loaded = IGNN.load(path)
    assert loaded.config == model.config and loaded.config["latent"] == "linear_gaussian"
    assert loaded.config["label_dim"] == label_dim and loaded.continuous
    torch.testing.assert_close(loaded.log_prob(graph, x, y), model.log_prob(graph, x, y), rtol=0, atol=0)
    torch.testing.assert_close(loaded.predict(graph, x), model.predict(graph, x), rtol=0, atol=0)
    target = y[0]
    torch.testing.assert_close(loaded.sample(graph, target, 2, generator=torch.Generator().manual_seed(4)),
                               model.sample(graph, target, 2, generator=torch.Generator().manual_seed(4)))


def test_errors_are_one_clear_line():
    model = _model()
    graph = model.graph
    x, y = _data(4)

    def message(call) -> str:
        with pytest.raises((TypeError, ValueError)) as error:
            call()
        assert "\n" not in str(error.value)
        return str(error.value)

    assert "use predict or predict_interval" in message(lambda: model.predict_proba(graph, x))
    assert "real-valued targets" in message(lambda: model.uncertainty_set(graph, y[0]))
    assert "must have shape (N, V)" in message(lambda: model.log_prob(graph, x, y[..., None].expand(-1, -1, 2)))
    assert "NaN or infinite" in message(lambda: model.log_prob(graph, x, torch.full((4, V), float("nan"))))
    assert "must be real" in message(lambda: model.log_prob(graph, x, y.to(torch.complex128)))
    assert "tensor, a NumPy array" in message(lambda: model.log_prob(graph, x, [["a"] * V] * 4))
    assert "shape (3,)" in message(lambda: model.sample(graph, y[:2], 2))
    assert "num_classes" in message(lambda: IGNN(graph, D, 2, latent="linear_gaussian"))
    assert "label_dim" in message(lambda: IGNN(graph, D, 2, label_dim=2))
    # JKOFlow takes real-valued targets too (tests/test_jko_targets.py), by the same rules.
    assert "num_classes" in message(lambda: JKOFlow(graph, D, 2, latent="linear_gaussian"))
    # Without a law (no classes, no continuous law) there is nothing to condition on.
    unconditional = IGNN(graph, D, num_blocks=1, hidden_feats=(8,))
    assert "linear_gaussian" in message(lambda: fit(unconditional, graph, x, y, TrainConfig(epochs=1)))
    classes = IGNN(graph, D, 2, num_blocks=1, hidden_feats=(8,))
    assert "use predict_proba" in message(lambda: classes.predict(graph, x))


def test_fit_with_validation_targets_checkpoints_and_resumes(tmp_path):
    model = _model(2)
    graph = model.graph
    x, y = _data(80, 2)
    history = fit(model, graph, x[:60], y[:60], TrainConfig(epochs=2, batch_size=20, lr=1e-2, patience=3, progress=False),
                  x_val=x[60:], y_val=y[60:])
    assert len(history.epochs) == 2 and all(record["val_nll"] < float("inf") for record in history.epochs)
    path = tmp_path / "run.pt"
    config = TrainConfig(epochs=2, batch_size=20, lr=1e-2, checkpoint_path=str(path), progress=False)
    fit(_model(2), graph, x[:60], y[:60], config, x_val=x[60:], y_val=y[60:])
    config.epochs = 3
    history = fit(_model(2), graph, x[:60], y[:60], config, x_val=x[60:], y_val=y[60:], resume_from=path)
    assert [record["epoch"] for record in history.epochs] == [1, 2, 3]
    with pytest.raises(ValueError, match="validation labels must have shape"):
        fit(_model(2), graph, x[:60], y[:60], TrainConfig(epochs=1, progress=False), x_val=x[60:], y_val=y[60:, :, 0])
