"""Prediction of real-valued targets: the ridge readout on [X, F(X)] and conformal intervals,
against NodeRidge, the intervals' definitions and the split conformal coverage guarantee."""
import math

import pytest
import torch

from dgl_iflow import IGNN
from dgl_iflow.baselines import NodeRidge
from dgl_iflow.conformal import conformal_quantile, interval_scores, scale_intervals
from dgl_iflow.models.readout import LatentReadout
from dgl_iflow.training import TrainConfig, fit

from graphs import cycle_graph

V, D = 3, 2


def _model(label_dim: int | None = None) -> IGNN:
    torch.manual_seed(0)
    return IGNN(cycle_graph(V), D, latent="linear_gaussian", label_dim=label_dim, num_blocks=2, hidden_feats=(8,),
                init_scale=1.0, sigma=0.8).double()


def _data(n: int, label_dim: int | None = None, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets that depend on a node's and its neighbour's features, nonlinearly."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, V, D, generator=generator, dtype=torch.float64)
    signal = x[..., 0] + 0.5 * x.roll(1, dims=1)[..., 1].tanh()
    noise = 0.3 * torch.randn(n, V, *(() if label_dim is None else (label_dim,)), generator=generator,
                              dtype=torch.float64)
    return x, (signal if label_dim is None else signal.unsqueeze(-1)) + noise


def test_interval_scores_are_half_widths_from_the_centre_and_scaling_covers_exactly_those_within():
    targets = torch.tensor([0.0, 1.5, -3.0, 2.0, 5.0])
    lower, upper = torch.tensor([-1.0, 1.0, -1.0, 2.0, 2.0]), torch.tensor([1.0, 3.0, 1.0, 2.0, 2.0])
    torch.testing.assert_close(interval_scores(targets, lower, upper), torch.tensor([0.0, 0.5, 3.0, 0.0, math.inf]))
    wide_lower, wide_upper = scale_intervals(lower, upper, 3.0)
    torch.testing.assert_close(wide_lower, torch.tensor([-3.0, -1.0, -3.0, 2.0, 2.0]))
    torch.testing.assert_close(wide_upper, torch.tensor([3.0, 5.0, 3.0, 2.0, 2.0]))
    inside = (targets >= wide_lower) & (targets <= wide_upper)
    assert inside.tolist() == (interval_scores(targets, lower, upper) <= 3.0).tolist()
    everything = scale_intervals(lower, upper, math.inf)
    assert torch.isinf(everything[0]).all() and torch.isinf(everything[1]).all()
    with pytest.raises(ValueError, match="one shape"):
        interval_scores(targets, lower[:2], upper)


@pytest.mark.parametrize("n", [19, 50])
def test_per_node_conformal_intervals_cover_the_exact_split_conformal_rate(n):
    """Any intervals, however wrong their widths, calibrated on n rows cover ceil((n + 1) a) / (n + 1)
    of new exchangeable rows on average over splits (within 4 Monte Carlo standard errors)."""
    level, splits, fresh = 0.9, 400, 50
    generator = torch.Generator().manual_seed(5)
    y = torch.randn(splits, n + fresh, V, generator=generator, dtype=torch.float64) * torch.tensor([0.5, 1.0, 3.0])
    lower, upper = torch.full_like(y, -1.0), torch.full_like(y, 1.0)  # own intervals: right for node 1 only
    scores = interval_scores(y, lower, upper)
    factor = torch.stack([conformal_quantile(scores[split, :n], level) for split in range(splits)])  # (splits, V)
    new_lower, new_upper = scale_intervals(lower[:, n:], upper[:, n:], factor.unsqueeze(1))
    covered = ((y[:, n:] >= new_lower) & (y[:, n:] <= new_upper)).double().mean(1)  # (splits, V)
    exact = math.ceil((n + 1) * level) / (n + 1)
    standard_error = covered.std(0) / math.sqrt(splits)
    assert ((covered.mean(0) - exact).abs() < 4 * standard_error + 1e-3).all()


@pytest.mark.parametrize("label_dim", [None, 2])
def test_the_readout_is_ridge_on_features_and_latent_and_leaves_densities_and_samples_alone(label_dim):
    model, graph = _model(label_dim), cycle_graph(V)
    x, y = _data(150, label_dim)
    probe, probe_y = _data(20, label_dim, seed=2)
    posterior_mean, log_prob = model.predict(graph, probe), model.log_prob(graph, probe, probe_y)
    model.fit_readout(graph, x, y)
    with torch.no_grad():
        h, h_probe = model.encode(graph, x, logdet=False)[0], model.encode(graph, probe, logdet=False)[0]
    ridge = NodeRidge.cross_validated(LatentReadout.features(x, h), y)
    torch.testing.assert_close(model.predict(graph, probe), ridge.predict(LatentReadout.features(probe, h_probe)))
    assert not torch.allclose(model.predict(graph, probe), posterior_mean)
    torch.testing.assert_close(model.log_prob(graph, probe, probe_y), log_prob, rtol=0, atol=0)

    # Own intervals: the prediction plus or minus z times the node's leave-one-out residual scale.
    lower, upper = model.predict_interval(graph, probe, level=0.8)
    scale = ridge.loo_residuals.reshape(150, V, -1).pow(2).mean(0).sqrt().reshape(V, *y.shape[2:])
    z = 1.2815515655446004  # Phi^-1(0.9)
    torch.testing.assert_close((upper - lower) / 2, (z * scale).expand_as(lower))
    torch.testing.assert_close((upper + lower) / 2, model.predict(graph, probe))


def test_calibrated_intervals_scale_the_own_ones_by_the_conformal_quantile_of_the_calibration_rows():
    model, graph = _model(), cycle_graph(V)
    x, y = _data(200)
    model.fit_readout(graph, x[:120], y[:120])
    x_cal, y_cal, x_new = x[120:180], y[120:180], x[180:]
    own_cal = model.predict_interval(graph, x_cal, 0.9)
    factor = conformal_quantile(interval_scores(y_cal, *own_cal), 0.9)  # (V,)
    expected = scale_intervals(*model.predict_interval(graph, x_new, 0.9), factor)
    calibrated = model.predict_interval(graph, x_new, 0.9, calibration=(x_cal, y_cal))
    torch.testing.assert_close(calibrated, expected, rtol=0, atol=0)
    # On the calibration rows themselves, each node covers exactly the rank's share of them.
    on_calibration = model.predict_interval(graph, x_cal, 0.9, calibration=(x_cal, y_cal))
    inside = ((y_cal >= on_calibration[0]) & (y_cal <= on_calibration[1])).double().mean(0)
    torch.testing.assert_close(inside, torch.full((V,), math.ceil(61 * 0.9) / 60, dtype=torch.float64))
    # Too few rows for the level: the whole real line, not a false promise.
    lower, upper = model.predict_interval(graph, x_new, 0.99, calibration=(x_cal[:10], y_cal[:10]))
    assert torch.isinf(lower).all() and torch.isinf(upper).all()
    with pytest.raises(ValueError, match="y_cal must have shape"):
        model.predict_interval(graph, x_new, calibration=(x_cal, y_cal[:, :2]))


def test_training_fits_the_readout_when_asked_and_checkpoints_keep_it(tmp_path):
    model, graph = _model(2), cycle_graph(V)
    x, y = _data(120, 2)
    fit(model, graph, x, y, TrainConfig(epochs=1, batch_size=40, readout=True, progress=False))
    assert model.readout.fitted and model.readout.regression and model.readout.scale.shape == (V, 2)
    model.save(tmp_path / "model.pt")
    loaded = IGNN.load(tmp_path / "model.pt")
    assert loaded.readout.regression
    torch.testing.assert_close(loaded.predict(graph, x), model.predict(graph, x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.predict_interval(graph, x), model.predict_interval(graph, x), rtol=0, atol=0)
    fit(model, graph, x, y, TrainConfig(epochs=1, batch_size=40, progress=False))  # weights change: head cleared
    assert not model.readout.fitted


@pytest.mark.parametrize("label_dim", [None, 2])
def test_target_report_is_its_definitions_recomputed(label_dim):
    from dgl_iflow.conformal import adaptive_conformal
    from dgl_iflow.evaluation import target_report
    from dgl_iflow.metrics import rmse

    model, graph = _model(label_dim), cycle_graph(V)
    x, y = _data(160, label_dim)
    x_train, y_train, x_test, y_test = x[:100], y[:100], x[100:], y[100:]
    model.fit_readout(graph, x_train, y_train)
    report = target_report(model, graph, x_train, y_train, x_test, y_test, calibration_fraction=0.25, seed=3)
    cut = 15
    assert report["protocol"]["calibration_rows"] == cut and report["protocol"]["evaluation_rows"] == 45
    assert report["prediction"]["flow"] == pytest.approx(rmse(model.predict(graph, x_test), y_test))
    ridge = NodeRidge.cross_validated(x_train, y_train)
    assert report["prediction"]["ridge"] == pytest.approx(rmse(ridge.predict(x_test), y_test))
    with torch.no_grad():
        nll = float(-model.log_prob(graph, x_test, y_test).mean())
    assert report["generation"]["flow"]["nll"] == pytest.approx(nll)
    y_new = y_test[cut:]
    for level in (0.5, 0.9):
        row = report["intervals"][str(level)]
        lower, upper = model.predict_interval(graph, x_test, level)
        assert row["own"] == pytest.approx(float(((y_new >= lower[cut:]) & (y_new <= upper[cut:])).double().mean()))
        assert row["own_width"] == pytest.approx(float((upper - lower)[cut:].mean()))
        split = model.predict_interval(graph, x_test[cut:], level, calibration=(x_test[:cut], y_test[:cut]))
        assert row["split"] == pytest.approx(float(((y_new >= split[0]) & (y_new <= split[1])).double().mean()))
        assert row["split_width"] == pytest.approx(float((split[1] - split[0]).mean()))
        # Adaptive conformal on every node coordinate's sequence of scores, in row order.
        scores = interval_scores(y_test, lower, upper).reshape(len(y_test), -1)
        runs = [adaptive_conformal(scores[:cut, j], scores[cut:, j], level) for j in range(scores.shape[1])]
        assert row["adaptive"] == pytest.approx(sum(run.coverage for run in runs) / len(runs))
        widths = torch.stack([run.thresholds for run in runs], 1) * (upper - lower)[cut:].reshape(45, -1)
        assert row["adaptive_median_width"] == pytest.approx(float(widths.median()))
    assert report["figure"]["generated"].shape == x_test.shape
    with pytest.raises(ValueError, match="real-valued targets"):
        classes = torch.randint(0, 2, (100, V))
        target_report(IGNN(graph, D, 2, num_blocks=1, hidden_feats=(8,)), graph, x_train, classes, x_test, classes[:60])
