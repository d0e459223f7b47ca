"""Coverage, calibration, label sets, anomaly p-values and the accuracy ablation of trained iGNNs.

Scores checkpoints written by ``dgl-iflow train`` (one per seed) with
:func:`dgl_iflow.evaluation.uncertainty_report` and prints mean ± standard deviation over them:

- the sets for X | Y at levels 0.5 / 0.9 / 0.95: the model's own (chi-squared radius), split
  conformal and adaptive conformal coverage on the evaluation part of the test split, with the
  latent radii;
- node-label prediction: accuracy, expected calibration error and conformal label sets, for the
  flow and for per-node logistic regression on all features;
- anomaly p-values: false-alarm rate, precision and recall at alpha 0.05 / 0.1;
- the prediction ablation, one change at a time on the same trained flows: Bayes' rule in the
  latent, a readout on the latent alone, the readout on [X, F(X)] (the recipe's), and logistic
  regression on X; with the paper protocol's MMD and energy, which no readout changes.

Checkpoints trained before the recipe fitted its readout get it here, on the training rows, as
``fit`` would (it is fitted after training and changes nothing else).

    for s in 0 1 2; do dgl-iflow train --dataset traffic --seed $s --out runs/traffic-$s; done
    python benchmarks/uncertainty.py --dataset traffic --checkpoints runs/traffic-*/model.pt --out runs/uncertainty

Writes ``OUT/<dataset>.json`` (every seed's report) and ``OUT/<dataset>_reliability.png`` (the
first checkpoint's reliability diagram). See ``docs/uncertainty.md``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from dgl_iflow import metrics, plots
from dgl_iflow.baselines import NodeLogistic
from dgl_iflow.checkpoints import read_checkpoint
from dgl_iflow.data import load_dataset
from dgl_iflow.evaluation import ALARM_LEVELS, LEVELS, uncertainty_report
from dgl_iflow.models import IGNN
from dgl_iflow.training.common import seeded


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=["traffic", "solar"])
    p.add_argument("--checkpoints", nargs="+", required=True, help="model.pt of each seed")
    p.add_argument("--calibration-fraction", type=float, default=0.3)
    p.add_argument("--step", type=float, default=0.05, help="adaptive conformal step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/uncertainty")
    return p.parse_args()


def prediction_ablation(model: IGNN, graph, x_train, y_train, x_test, y_test) -> dict[str, float]:
    """Test accuracy of every way to predict with one trained flow, and of logistic regression."""
    with torch.no_grad():
        h_train = model.encode(graph, x_train, logdet=False)[0]
        h_test = model.encode(graph, x_test, logdet=False)[0]
    model.readout.clear()
    rows = {"Bayes' rule in the latent": metrics.node_accuracy(model.predict_proba(graph, x_test), y_test)}
    latent_only = NodeLogistic(h_train, y_train, features="all")
    rows["readout on F(X) alone"] = metrics.node_accuracy(latent_only.predict_proba(h_test), y_test)
    model.fit_readout(graph, x_train, y_train)
    rows["readout on [X, F(X)] (recipe)"] = metrics.node_accuracy(model.predict_proba(graph, x_test), y_test)
    rows["logistic regression on X (baseline)"] = metrics.node_accuracy(
        NodeLogistic(x_train, y_train, features="all").predict_proba(x_test), y_test)
    return rows


def score(path: str, dataset, args: argparse.Namespace) -> tuple[dict, dict]:
    model = IGNN.from_checkpoint(read_checkpoint(path)).eval()
    graph = dataset.graph
    x_train, y_train = dataset.split("train")
    x_test, y_test = dataset.split("test")
    ablation = prediction_ablation(model, graph, x_train, y_train, x_test, y_test)  # leaves the readout fitted
    with seeded(0):
        protocol = metrics.paper_protocol(x_test, y_test, lambda labels, n: model.sample(graph, labels, n))
    report = uncertainty_report(model, graph, x_train, y_train, x_test, y_test,
                                calibration_fraction=args.calibration_fraction, step=args.step)
    report["ablation"] = ablation
    report["generation"] = dict(mmd=protocol["mmd"], energy=protocol["energy"],
                                test_nll=-model.log_prob(graph, x_test, y_test).mean().item())
    return report, report.pop("curves")


def spread(values: list[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    t = torch.tensor(finite, dtype=torch.float64)
    return f"{t.mean():.3f} ± {t.std():.3f}" if len(finite) > 1 else f"{finite[0]:.3f}"


def print_tables(name: str, reports: list[dict]) -> None:
    print(f"\n## {name}: {len(reports)} seeds, mean ± std; "
          f"{reports[0]['protocol']['calibration_rows']} calibration and "
          f"{reports[0]['protocol']['evaluation_rows']} evaluation rows of the test split\n")
    print("| level | raw coverage | split conformal | adaptive conformal | raw radius | split radius | "
          "adaptive median radius |")
    print("|---|---|---|---|---|---|---|")
    for level in map(str, LEVELS):
        cells = [spread([r["sets"][level][k] for r in reports])
                 for k in ("raw", "split", "adaptive", "raw_radius", "split_radius", "adaptive_median_radius")]
        print(f"| {level} | " + " | ".join(cells) + " |")
    print("\n| predictor | accuracy | ECE | log loss | " + " | ".join(f"set coverage / size at {lv}" for lv in LEVELS) + " |")
    print("|---|---|---|---|" + "---|" * len(LEVELS))
    for predictor in ("flow", "logistic"):
        rows = [r["labels"][predictor] for r in reports]
        sets = [f"{spread([x['sets'][str(lv)]['coverage'] for x in rows])} / "
                f"{spread([x['sets'][str(lv)]['mean_size'] for x in rows])}" for lv in LEVELS]
        print(f"| {predictor} | {spread([x['accuracy'] for x in rows])} | {spread([x['calibration_error'] for x in rows])} | "
              f"{spread([x['log_loss'] for x in rows])} | " + " | ".join(sets) + " |")
    print("\n| anomalies | scorer | alpha | false alarms | precision | recall |")
    print("|---|---|---|---|---|---|")
    for unit in ("per_sample", "per_node"):
        for scorer in reports[0]["anomalies"][unit]:
            for alpha in map(str, ALARM_LEVELS):
                cells = [spread([r["anomalies"][unit][scorer][alpha][k] for r in reports])
                         for k in ("false_alarm_rate", "precision", "recall")]
                print(f"| {unit.replace('_', ' ')} | {scorer} | {alpha} | " + " | ".join(cells) + " |")
    print("\n| prediction (same trained flows) | test accuracy |")
    print("|---|---|")
    for row in reports[0]["ablation"]:
        print(f"| {row} | {spread([r['ablation'][row] for r in reports])} |")
    generation = {k: spread([r["generation"][k] for r in reports]) for k in ("mmd", "energy", "test_nll")}
    print(f"\ngeneration (unchanged by the readout): MMD {generation['mmd']}, energy {generation['energy']}, "
          f"test NLL {generation['test_nll']}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset, root=args.data_root)
    reports, curves = [], []
    for path in args.checkpoints:
        report, curve = score(path, dataset, args)
        reports.append(dict(checkpoint=path, **report))
        curves.append(curve)
        print(f"scored {path}", flush=True)
    (out / f"{args.dataset}.json").write_text(json.dumps(reports, indent=1) + "\n")
    plots.reliability_diagram(curves[0], out / f"{args.dataset}_reliability.png",
                              title=f"{args.dataset}: coverage and calibration on held-out test rows")
    print_tables(args.dataset, reports)


if __name__ == "__main__":
    main()
