"""uncertainty_report against the same quantities computed directly from their definitions."""
from __future__ import annotations

import math

import pytest
import torch

from dgl_iflow import IGNN, TrainConfig, fit, metrics
from dgl_iflow.conformal import adaptive_conformal, conformal_p_values, conformal_quantile
from dgl_iflow.data import load_dataset
from dgl_iflow.evaluation import GRID, LEVELS, split_for_calibration, uncertainty_report


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("three_node", n_per_label=120, seed=0)
    x_train, y_train = data.split("train")
    model = IGNN(data.graph, 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8), sigma=0.6)
    fit(model, data.graph, x_train, y_train, TrainConfig(epochs=2, batch_size=64, progress=False))
    return model.eval(), data


def test_report_matches_its_definitions(trained):
    model, data = trained
    x_train, y_train = data.split("train")
    x_test, y_test = data.split("test")
    report = uncertainty_report(model, data.graph, x_train, y_train, x_test, y_test, calibration_fraction=0.4)
    cut = split_for_calibration(len(x_test), 0.4)
    assert report["protocol"]["calibration_rows"] == cut
    s_cal = model.whitened_distance(data.graph, x_test[:cut], y_test[:cut]).double()
    s_ev = model.whitened_distance(data.graph, x_test[cut:], y_test[cut:]).double()
    for level in LEVELS:
        row = report["sets"][str(level)]
        raw = model.in_uncertainty_set(data.graph, x_test[cut:], y_test[cut:], level).double().mean().item()
        assert math.isclose(row["raw"], raw)
        assert math.isclose(row["split"], (s_ev <= conformal_quantile(s_cal, level)).double().mean().item())
        assert math.isclose(row["adaptive"], adaptive_conformal(s_cal, s_ev, level).coverage)
    assert len(report["curves"]["sets"]["raw"]) == len(GRID)
    proba = model.predict_proba(data.graph, x_test[cut:])
    flow = report["labels"]["flow"]
    assert math.isclose(flow["accuracy"], metrics.node_accuracy(proba, y_test[cut:]))
    assert math.isclose(flow["calibration_error"], metrics.calibration_error(proba, y_test[cut:]), rel_tol=1e-6)
    for level in LEVELS:
        sets = flow["sets"][str(level)]
        assert 0.0 <= sets["coverage"] <= 1.0 and 0.0 <= sets["mean_size"] <= 2.0
    # Per-sample anomaly p-values of the latent distance, against the normal calibration rows.
    normal = torch.zeros_like(y_test)
    scores = model.whitened_distance(data.graph, x_test, normal).double()
    normal_cal = (y_test[:cut] == 0).all(dim=1)
    if normal_cal.any():
        p = conformal_p_values(scores[:cut][normal_cal], scores[cut:])
        expected = metrics.precision_recall(p <= 0.1, (y_test[cut:] != 0).any(dim=1))
        found = report["anomalies"]["per_sample"]["flow, latent distance"]["0.1"]
        for key, value in expected.items():
            assert (math.isnan(value) and math.isnan(found[key])) or math.isclose(found[key], value)
    # Per node: the share of normal nodes flagged at alpha = 0.5, node by node against its own normal nodes.
    node_scores = model.node_whitened_distance(data.graph, x_test, normal).double()
    flagged = []
    for v in range(y_test.shape[1]):
        cal = node_scores[:cut, v][y_test[:cut, v] == 0]
        normal_ev = y_test[cut:, v] == 0
        flagged.append(conformal_p_values(cal, node_scores[cut:, v][normal_ev]) <= 0.5)
    alarms = report["curves"]["alarms"]
    assert math.isclose(alarms["flow, latent distance"][alarms["levels"].index(0.5)], torch.cat(flagged).double().mean().item())


def test_calibration_split_refusals():
    with pytest.raises(ValueError, match="calibration_fraction"):
        split_for_calibration(10, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        split_for_calibration(1, 0.5)
    assert split_for_calibration(10, 0.01) == 1 and split_for_calibration(10, 0.99) == 9


def test_a_node_never_normal_in_the_calibration_rows_is_never_flagged():
    from dgl_iflow.evaluation import _anomaly_results

    y_cal = torch.tensor([[0, 1], [0, 1], [1, 1]])
    y_ev = torch.tensor([[0, 0], [1, 1]])
    scores = {"s": torch.tensor([[0.1, 5.0], [0.2, 6.0], [0.3, 7.0]], dtype=torch.float64)}
    results, curves = _anomaly_results(scores, y_cal, {"s": torch.tensor([[9.0, 9.0], [9.0, 9.0]], dtype=torch.float64)},
                                       y_ev, per_node=True)
    # Node 0: p = 1/3 against its two normal calibration nodes, flagged at alpha 0.5 only; node 1: p = 1.
    assert results["s"]["0.1"]["precision"] != results["s"]["0.1"]["precision"]  # nothing flagged: NaN
    assert math.isclose(curves["s"][GRID.index(0.35)], 0.5)  # node 0's normal row flagged, node 1's not
