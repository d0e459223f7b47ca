"""The flow-free baselines for real-valued targets against NumPy's least squares and brute force,
and the benchmark that sets them beside the flow."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dgl_iflow.baselines import NearestRows, NodeRidge, TargetGaussian
from dgl_iflow.data import load_dataset

N, V, D = 400, 3, 2


def _rows(q: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features linear in the targets plus correlated noise."""
    generator = torch.Generator().manual_seed(seed)
    shape = (N, V) if q is None else (N, V, q)
    y = torch.randn(shape, generator=generator, dtype=torch.float64)
    gain = torch.randn(y[0].numel(), V * D, generator=generator, dtype=torch.float64)
    mixing = torch.randn(V * D, V * D, generator=generator, dtype=torch.float64) * 0.3
    noise = torch.randn(N, V * D, generator=generator, dtype=torch.float64) @ mixing
    return (1.0 + y.flatten(1) @ gain + noise).unflatten(1, (V, D)), y


def _lstsq_with_intercept(inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    design = np.hstack([np.ones((len(inputs), 1)), inputs])
    return np.linalg.lstsq(design, outputs, rcond=None)[0]


@pytest.mark.parametrize("q", [None, 2])
def test_target_gaussian_is_least_squares_with_the_residual_covariance(q):
    x, y = _rows(q)
    model = TargetGaussian(x, y, ridge=1e-3)
    flat_y, flat_x = y.flatten(1).numpy(), x.flatten(1).numpy()
    coef = _lstsq_with_intercept(flat_y, flat_x)
    np.testing.assert_allclose(model.coef.numpy(), coef, atol=1e-10)
    residual = flat_x - np.hstack([np.ones((N, 1)), flat_y]) @ coef
    cov = residual.T @ residual / (N - 1 - flat_y.shape[1]) + 1e-3 * np.eye(V * D)
    np.testing.assert_allclose((model.chol @ model.chol.T).numpy(), cov, atol=1e-10)
    mean = torch.from_numpy(np.hstack([np.ones((5, 1)), flat_y[:5]]) @ coef)
    dense = torch.distributions.MultivariateNormal(mean, torch.from_numpy(cov))
    torch.testing.assert_close(model.log_prob(x[:5], y[:5]), dense.log_prob(x[:5].flatten(1)), rtol=0, atol=1e-9)
    draws = model.generate(y[0], 20000)
    assert draws.shape == (20000, V, D)
    torch.testing.assert_close(draws.mean(0), mean[0].unflatten(0, (V, D)), rtol=0, atol=0.05)


def test_nearest_rows_draw_among_the_brute_force_nearest():
    x, y = _rows()
    torch.testing.assert_close(NearestRows(x, y, k=1).generate(y[17], 3), x[17].expand(3, V, D))
    target = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    distances = [float((row - target).square().sum()) for row in y]
    nearest = set(np.argsort(distances)[:5].tolist())
    draws = NearestRows(x, y, k=5, seed=1).generate(target, 50)
    drawn = {int(torch.nonzero((x == row).all(-1).all(-1)).flatten()[0]) for row in draws}
    assert drawn <= nearest and len(drawn) > 1
    with pytest.raises(ValueError, match="shape"):
        NearestRows(x, y).generate(target[:2], 1)


@pytest.mark.parametrize("q", [None, 2])
@pytest.mark.parametrize("l2", [0.0, 5.0])
def test_node_ridge_is_penalized_least_squares(q, l2):
    x, y = _rows(q, seed=2)
    flat_x, flat_y = x.flatten(1).numpy(), y.flatten(1).numpy()
    # The penalty as extra rows sqrt(l2) I on the weights, none on the intercept.
    design = np.vstack([np.hstack([np.ones((N, 1)), flat_x]),
                        np.hstack([np.zeros((V * D, 1)), np.sqrt(l2) * np.eye(V * D)])])
    targets = np.vstack([flat_y, np.zeros((V * D, flat_y.shape[1]))])
    coef = np.linalg.lstsq(design, targets, rcond=None)[0]
    model = NodeRidge(x, y, l2=l2)
    np.testing.assert_allclose(model.bias.numpy(), coef[0], atol=1e-9)
    np.testing.assert_allclose(model.weight.numpy(), coef[1:], atol=1e-9)
    prediction = model.predict(x[:4])
    assert prediction.shape == y[:4].shape
    np.testing.assert_allclose(prediction.flatten(1).numpy(), np.hstack([np.ones((4, 1)), flat_x[:4]]) @ coef,
                               atol=1e-9)


def _benchmark():
    """benchmarks/continuous.py as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "continuous.py"
    spec = importlib.util.spec_from_file_location("continuous_benchmark", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_benchmark_script_runs_one_epoch(tmp_path):
    """benchmarks/continuous.py end to end on a tiny continuous chordal set: every score finite, both figures."""
    script = _benchmark()
    results = script.run_seed(load_dataset("continuous_chordal", p=11, n=150), epochs=1, seed=0, figures=tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["continuous_chordal_predictions.png",
                                                                "continuous_chordal_sweep.png"]
    assert set(results["generation"]) == {"flow", "target_gaussian", "nearest_rows"}
    assert set(results["prediction"]) == {"flow", "linear", "ridge", "training_mean", "posterior_mean",
                                          "ridge_on_latent"}
    assert set(results["intervals"]) == {"0.5", "0.9", "0.95"}
    scores = [value for task in ("generation", "prediction") for method in results[task].values()
              for value in method.values()]
    assert all(math.isfinite(value) for value in scores)
    # 9 calibration rows are too few for a split conformal 0.95 interval: ceil(10 * 0.95) > 9.
    intervals = [(level, name, value) for level, row in results["intervals"].items() for name, value in row.items()]
    assert [(level, name) for level, name, value in intervals if not math.isfinite(value)] == [("0.95", "split_width")]
    assert len(script.summary([results, results])) == len(scores) + len(intervals)


@pytest.mark.parametrize("q", [None, 2])
@pytest.mark.parametrize("l2", [0.0, 5.0])
def test_node_ridge_leave_one_out_residuals_are_the_refits_without_each_row(q, l2):
    x, y = _rows(q, seed=3)
    model = NodeRidge(x, y, l2=l2)
    assert model.loo_residuals.shape == y.shape
    for row in (0, 7, N - 1):
        keep = torch.arange(N) != row
        refit = NodeRidge(x[keep], y[keep], l2=l2)
        torch.testing.assert_close(model.loo_residuals[row], (y[row:row + 1] - refit.predict(x[row:row + 1]))[0],
                                   rtol=0, atol=1e-9)


def test_node_ridge_cross_validated_takes_the_penalty_of_least_leave_one_out_error():
    x, y = _rows(None, seed=4)
    penalties = (0.0, 1.0, 100.0, 1e4)
    chosen = NodeRidge.cross_validated(x, y, penalties)
    errors = {l2: float(NodeRidge(x, y, l2=l2).loo_residuals.pow(2).mean()) for l2 in penalties}
    assert chosen.l2 == min(errors, key=errors.get)
    with pytest.raises(ValueError, match="at least one"):
        NodeRidge.cross_validated(x, y, ())


def test_an_interpolating_fit_has_no_finite_leave_one_out_error_and_is_never_chosen():
    x, y = _rows(None, seed=5)
    few_x, few_y = x[:5], y[:5]  # 5 rows, V d = 6 features: l2 = 0 interpolates
    assert torch.isinf(NodeRidge(few_x, few_y, l2=0.0).loo_residuals).all()
    chosen = NodeRidge.cross_validated(few_x, few_y, (0.0, 1.0))
    assert chosen.l2 == 1.0 and torch.isfinite(chosen.loo_residuals).all()
