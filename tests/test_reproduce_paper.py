"""benchmarks/reproduce_paper.py on a small synthetic data set: baseline rows, the time-to-quality trace."""
from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path

import torch

from dgl_iflow import baselines, metrics
from dgl_iflow.data import load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baseline_rows_table_and_figures(tmp_path):
    script = load_script()
    args = script.parse_args(["--baselines-only", "--baseline-seeds", "2", "--seed", "3"])
    dataset = load_dataset("three_node", n_per_label=60, seed=0)
    rows, covered = script.baseline_rows(dataset, args, tmp_path)
    by_key = {row["baseline"]: row for row in rows}
    assert set(by_key) == set(script.GENERATOR_BASELINES) | set(script.PREDICTOR_BASELINES)

    # The generator rows average the protocol over seeds 3 and 4 of a model fitted once.
    x_train, y_train = dataset.split("train")
    x_test, y_test = dataset.split("test")
    scores = []
    for seed in (3, 4):
        model = baselines.LabelGaussian(x_train, y_train, seed=seed)
        scores.append(metrics.paper_protocol(x_test, y_test, model.generate)["mmd"])
    row = by_key["label_gaussian"]
    assert math.isclose(row["mmd"], sum(scores) / 2, rel_tol=1e-12)
    assert math.isclose(row["mmd_std"], statistics.stdev(scores), rel_tol=1e-9)

    # NLL of the per-label Gaussian on the rows whose label vector has >= V d + 1 training rows.
    full_rank = baselines.LabelGaussian(x_train, y_train, min_rows=3 * 2 + 1)
    expected = -full_rank.log_prob(x_test, y_test)
    assert torch.equal(covered, ~expected.isnan())
    assert math.isclose(row["nll_test_label_gaussian_rows"], float(expected[covered].mean()))
    assert by_key["all_zero"]["node_accuracy"] == float((y_test == 0).double().mean())
    # The predictors' rows score sample-first (N, V, K) probabilities against y_test (N, V).
    logistic = baselines.NodeLogistic(x_train, y_train, features="all", num_classes=dataset.num_classes)
    proba = logistic.predict_proba(x_test)
    assert proba.shape == (*y_test.shape, dataset.num_classes)
    assert by_key["logistic_all"]["node_accuracy"] == metrics.node_accuracy(proba, y_test)
    assert by_key["logistic_all"]["node_log_loss"] == metrics.node_log_loss(proba, y_test)

    # The table lists a data set's baselines under its name only.
    table = script.markdown_table([], rows, script.parse_args(["--datasets", "traffic"]))
    assert "three_node" not in table and table.count("| traffic |") == len(script.PAPER["traffic"])
    for name in ("three_node_label_gaussian_samples.png", "three_node_logistic_all_proba.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_trace_scores_the_run_without_changing_it(tmp_path):
    script = load_script()
    dataset = load_dataset("three_node", n_per_label=60, seed=0)
    covered = torch.ones(len(dataset.split("test")[0]), dtype=torch.bool)
    common = ["--blocks", "1", "--hidden", "8", "8", "--epochs", "3", "--batch-size", "50"]
    plain = script.run_one(dataset, "l3", script.parse_args(common), covered, tmp_path)
    traced = script.run_one(dataset, "l3", script.parse_args(common + ["--trace-every", "2"]), covered, tmp_path)

    # Scoring under its own seed leaves training, and the final scores, as they were.
    # (a point before the end fits joint Gaussians for its scoring and drops them again).
    for key in ("mmd", "energy", "nll_test", "node_accuracy", "final", "pseudo_count"):
        assert traced[key] == plain[key], key
    assert plain["pseudo_count"] is not None
    # The same flow scored with its node law alone, in its own row.
    assert traced["node_law"]["mmd"] == plain["node_law"]["mmd"] != plain["mmd"]
    assert "node law only" in script.markdown_table([dict(plain, dataset="traffic")], [], script.parse_args(["--datasets", "traffic"]))
    batches = math.ceil(len(dataset.split("train")[0]) / 50)
    trace = traced["trace"]
    assert [p["epoch"] for p in trace] == [2, 3] and [p["minibatches"] for p in trace] == [2 * batches, 3 * batches]
    assert 0 < trace[0]["train_s"] < trace[1]["train_s"] <= traced["train_s"] + 1e-9
    # The last point scores the model run_one returns, with the same latent draws.
    assert (trace[-1]["mmd"], trace[-1]["energy"]) == (plain["mmd"], plain["energy"])
    assert "time_to_paper" not in traced  # the paper has no number for this data set


def test_time_to_quality_finds_the_first_point_at_or_below_each_target():
    script = load_script()
    trace = [dict(epoch=e, minibatches=10 * e, train_s=float(e), mmd=m, energy=g)
             for e, m, g in ((1, 0.3, 2.0), (2, 0.12, 0.9), (3, 0.13, 0.5), (4, 0.1, 0.537))]
    reached = script.time_to_quality(trace, 0.128, 0.537)
    assert reached["mmd"] == dict(epoch=2, minibatches=20, train_s=2.0)
    assert reached["energy"]["epoch"] == 3 and reached["both"]["epoch"] == 4
    assert script.time_to_quality(trace, 0.05, 0.537)["mmd"] is None
    row = dict(dataset="traffic", epochs=4, time_to_paper=script.time_to_quality(trace, 0.05, 0.537))
    assert "MMD <= 0.128: not within 4 epochs" in script._reached(row)
