"""JKOFlow with real-valued node targets (the law ``"linear_gaussian"``), trained by :func:`fit_jko` on the
continuous chordal data: densities against a brute-force change of variables, generation, prediction,
checkpoints and the trainer's use of the law."""
from __future__ import annotations

import copy

import pytest
import torch

from dgl_iflow import JKOConfig, JKOFlow, fit_jko
from dgl_iflow.data import load_dataset
from dgl_iflow.latents import LinearGaussianLatent

from graphs import brute_force_jacobian

P, D = 5, 2


def _config(**overrides) -> JKOConfig:
    return JKOConfig(**{**dict(max_blocks=2, iterations=40, batch_size=64, tol=0.0, progress=False), **overrides})


def _model(graph, label_dim: int | None = None) -> JKOFlow:
    # RK4 everywhere: per-sample brute-force Jacobians need a solver whose steps do not follow the batch.
    return JKOFlow(graph, D, latent="linear_gaussian", label_dim=label_dim, hidden_feats=(16, 16), steps=3,
                   solver="rk4")


def _paired_targets(y: torch.Tensor) -> torch.Tensor:
    """Two targets per node ``(N, V, 2)``: the data set's own, and one that moves against it."""
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    return torch.stack([y, 0.3 * noise - y], dim=-1)


@pytest.fixture(scope="module")
def data():
    return load_dataset("continuous_chordal", p=P, n=400, seed=0)


@pytest.fixture(scope="module", params=[None, 2], ids=["scalar", "q2"])
def trained(request, data):
    """A model of ``label_dim`` ``None`` or 2 grown for two short blocks; the second with validation data,
    early stopping and one re-spacing round, which measure the validation NLL through the law."""
    label_dim = request.param
    x_train, y_train = data.split("train")
    x_test, y_test = data.split("test")
    if label_dim is not None:
        y_train, y_test = _paired_targets(y_train), _paired_targets(y_test)
    torch.manual_seed(0)
    model = _model(data.graph, label_dim)
    if label_dim is None:
        history = fit_jko(model, data.graph, x_train, y_train, _config())
    else:
        history = fit_jko(model, data.graph, x_train[:240], y_train[:240],
                          _config(patience=3, eval_every=10, reparametrize_rounds=1, retrain_iterations=10),
                          x_val=x_train[240:], y_val=y_train[240:])
        x_train, y_train = x_train[:240], y_train[:240]
    return model.eval(), history, (x_train, y_train), (x_test, y_test)


def _exact(model: JKOFlow) -> JKOFlow:
    """The model in float64 with fine RK4 steps, so the integrated divergence is the log-det of the map."""
    exact = copy.deepcopy(model).double()
    for block in exact.blocks:
        block.steps = 40
    return exact


def test_log_prob_is_the_linear_gaussian_plus_the_brute_force_log_det(trained):
    model, _, (x, y), _ = trained
    model = _exact(model)
    graph = model.graph
    x, y = x[:4].double(), y[:4].double()
    log_prob = model.log_prob(graph, x, y)
    h = model.encode(graph, x, logdet=False)[0]
    # The law's density written out: every node's latent around A y_v + b, sigma 1.
    weight, bias = model.latent.weight, model.latent.bias
    centers = y.reshape(4, P, -1) @ weight.T + bias
    gaussian = torch.distributions.Normal(centers, model.latent.sigma).log_prob(h).sum(dim=(-2, -1))
    jacobian = brute_force_jacobian(lambda batch: model.encode(graph, batch, logdet=False)[0], x, samples_first=True)
    expected = gaussian + torch.linalg.slogdet(jacobian).logabsdet
    torch.testing.assert_close(log_prob, expected, rtol=0, atol=1e-6)
    # The flow is off the identity, so the log-det is no trivial zero.
    assert float(torch.linalg.slogdet(jacobian).logabsdet.abs().max()) > 0.1


def test_trainer_minimizes_the_models_own_nll_under_the_law(trained):
    """The JKO potential is the law's -log q(H | Y): the history's training NLL is the model's, by the same map."""
    model, history, (x, y), _ = trained
    with torch.no_grad():
        nll = float(-model.log_prob(model.graph, x, y).mean())
    assert history.train_nll() == pytest.approx(nll, rel=1e-4)
    # The law took the training targets' mean as the prior of its posterior (fit_before_training).
    torch.testing.assert_close(model.latent.prior_mean, y.reshape(len(y), P, -1).mean(0))
    assert isinstance(model.latent, LinearGaussianLatent) and model.continuous and model.num_classes is None


def test_samples_given_any_real_target_encode_back_to_the_law_draws(trained):
    model, _, _, (_, y_test) = trained
    model = _exact(model)
    graph = model.graph
    for y in (y_test[0].double(), torch.full_like(y_test[0], 2.5, dtype=torch.float64)):
        samples = model.sample(graph, y, n=5, generator=torch.Generator().manual_seed(3))
        assert samples.shape == (5, P, D) and samples.dtype == torch.float64
        h = model.latent.sample(y, 5, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(model.encode(graph, samples, logdet=False)[0], h, rtol=0, atol=1e-6)


def test_predictions_have_the_targets_shape_and_are_the_law_posterior(trained):
    model, _, _, (x_test, y_test) = trained
    graph = model.graph
    prediction = model.predict(graph, x_test)
    lower, upper = model.predict_interval(graph, x_test, level=0.8)
    assert prediction.shape == lower.shape == upper.shape == y_test.shape
    assert (lower < prediction).all() and (prediction < upper).all()
    h = model.encode(graph, x_test, logdet=False)[0]
    torch.testing.assert_close(prediction, model.latent.posterior_mean(h), rtol=0, atol=0)
    with pytest.raises(ValueError, match="use predict or predict_interval"):
        model.predict_proba(graph, x_test)


def test_predictions_beat_the_training_mean(trained):
    model, _, (_, y_train), (x_test, y_test) = trained
    prediction = model.predict(model.graph, x_test)
    # Only the data set's own target is predictable from X (the other one is partly noise).
    prediction, y_test, y_train = (t if t.ndim == 2 else t[..., 0] for t in (prediction, y_test, y_train))
    rmse = float((prediction - y_test).pow(2).mean().sqrt())
    baseline = float((y_train.mean(0) - y_test).pow(2).mean().sqrt())
    # Measured about 0.35 against 1.0 (the exact posterior's is 0.32); an untrained flow's
    # latents hardly depend on the targets.
    assert rmse < 0.6 * baseline


def test_save_and_load_give_the_same_densities_predictions_and_samples(trained, tmp_path):
    model, _, (x, y), (x_test, _) = trained
    graph = model.graph
    path = tmp_path / "targets.pt"
    model.save(path)
    loaded = JKOFlow.load(path).eval()
    assert loaded.config == model.config and loaded.config["latent"] == "linear_gaussian"
    assert loaded.config["label_dim"] == model.latent.label_dim and loaded.continuous
    assert len(loaded.blocks) == len(model.blocks)
    torch.testing.assert_close(loaded.log_prob(graph, x, y), model.log_prob(graph, x, y), rtol=0, atol=0)
    torch.testing.assert_close(loaded.predict(graph, x_test), model.predict(graph, x_test), rtol=0, atol=0)
    torch.testing.assert_close(loaded.latent.prior_cov, model.latent.prior_cov, rtol=0, atol=0)
    model.load_weights(path)  # the same configuration


def test_errors_are_one_clear_line(data):
    graph = data.graph
    x, y = data.split("train")

    def message(call) -> str:
        with pytest.raises((TypeError, ValueError)) as error:
            call()
        assert "\n" not in str(error.value)
        return str(error.value)

    assert "num_classes" in message(lambda: JKOFlow(graph, D, 2, latent="linear_gaussian"))
    assert "label_dim" in message(lambda: JKOFlow(graph, D, 2, label_dim=2))
    model = _model(graph)
    assert "y_train must have shape (N, V)" in message(lambda: fit_jko(model, graph, x, _paired_targets(y), _config()))
    bad = y.clone()
    bad[3, 1] = float("nan")
    assert "NaN or infinite" in message(lambda: fit_jko(model, graph, x, bad, _config()))
    assert "y_val must have shape (N, V, q) = (5, 5, 2)" in message(
        lambda: fit_jko(_model(graph, 2), graph, x, _paired_targets(y), _config(), x_val=x[:5], y_val=y[:5]))
    # Class labels are checked against the law's classes, as fit checks them.
    classes = JKOFlow(graph, D, 2, hidden_feats=(8,), solver="rk4")
    labels = (y > 0).long()
    labels[0, 0] = 2
    assert "y_train must lie in [0, 2); found [2]" in message(lambda: fit_jko(classes, graph, x, labels, _config()))
    assert len(model.blocks) == len(classes.blocks) == 0  # refused before training
