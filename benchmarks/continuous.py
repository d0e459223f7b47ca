"""X | Y and Y | X for real-valued node targets: the flow against the flow-free baselines.

Trains an IGNN with the law ``"linear_gaussian"`` (recipe-like settings: 8 Lipschitz blocks of
widths 32, the graph-wide channel and layer, a per-node affine end, a learned map A y + b, no
transport cost) on the training split, once per seed, and prints on the test split, mean ± std
over seeds:

- generation, conditioning on the test targets: one generated row per test row, for the test
  row's own target vector, against the real test rows, by ``metrics.mmd`` (every kernel) and
  ``metrics.energy_distance``; and the test NLL per sample. Baselines: ``TargetGaussian`` (mean
  linear in Y), ``NearestRows`` (training rows of the nearest target vectors);
- prediction: RMSE of the posterior mean (and the 90 % intervals' coverage and width) against
  per-node linear and ridge regression on all features (``NodeRidge``; the ridge penalty chosen
  on a fifth of the training rows held out) and the training mean; and the intervals calibrated
  by split conformal prediction per node (``conformal_quantile`` of the residual in units of the
  interval's half-width on the first 30 % of the test rows), their coverage and width on the
  other 70 %, beside the model's own intervals on those rows; and, to show what limits the
  posterior mean, ridge regression of the targets on the same trained flow's latent of all nodes,
  alone and beside the features.

    python benchmarks/continuous.py --dataset traffic --seeds 0 1 2 --out runs/continuous
    python benchmarks/continuous.py --dataset solar --epochs 200 --seeds 0 1 2 --out runs/continuous

Writes ``OUT/<dataset>.json`` with every seed's numbers, and the first seed's figures:
``OUT/<dataset>_sweep.png`` (generated against real node features as the target sweeps its
range, one panel per node group) and ``OUT/<dataset>_predictions.png`` (predicted against true
targets with the intervals).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from dgl_iflow import IGNN, metrics, plots
from dgl_iflow.baselines import NearestRows, NodeRidge, TargetGaussian
from dgl_iflow.conformal import conformal_quantile
from dgl_iflow.data import holdout, load_dataset
from dgl_iflow.recipe import BATCH_SIZE, HIDDEN_FEATS, LIPSCHITZ
from dgl_iflow.training import TrainConfig, fit
from dgl_iflow.training.common import seeded

#: The data sets with real-valued targets, and how they are loaded.
DATASETS = {"traffic": dict(target="next_flow"), "solar": dict(target="next_dhi"), "continuous_chordal": dict(p=31)}
#: Ridge penalties tried on the held-out training rows.
RIDGE_GRID = tuple(10.0**k for k in range(-3, 5))
LEVEL = 0.9
#: Share of the test rows (the first ones) that calibrates the conformal intervals.
CALIBRATION_FRACTION = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/continuous")
    return p.parse_args(argv)


def flow_model(graph, feats: int) -> IGNN:
    return IGNN(graph, feats, latent="linear_gaussian", num_blocks=8, hidden_feats=HIDDEN_FEATS, graph_mean=True,
                graph_mean_linear=True, node_affine=True, lipschitz_coeff=LIPSCHITZ, trainable_means=True)


def generation_scores(real: torch.Tensor, generated: torch.Tensor) -> dict[str, float]:
    """MMD for every kernel and the energy distance between rows ``(n, V, d)``."""
    scores = {f"mmd_{alpha:g}": value for alpha, value in metrics.mmd(real, generated).items()}
    return {**scores, "energy": metrics.energy_distance(real, generated)}


def rmse(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    return float((prediction.double() - truth.double()).pow(2).mean().sqrt())


def chosen_ridge(x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    """The penalty of :data:`RIDGE_GRID` of least RMSE on a fifth of the rows, fitted on the rest."""
    (x_fit, y_fit), (x_held, y_held) = holdout(x, y, 0.2, seed)
    return min(RIDGE_GRID, key=lambda l2: rmse(NodeRidge(x_fit, y_fit, l2=l2).predict(x_held), y_held))


def conformal_intervals(y: torch.Tensor, mean: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                        level: float) -> dict[str, float]:
    """Coverage and mean width of the model's intervals and of their split conformal rescaling
    per node, calibrated on the first :data:`CALIBRATION_FRACTION` of the rows ``(N, V)`` and
    measured on the others."""
    half = (upper - lower) / 2
    scores = (y - mean).abs() / half
    count = max(1, round(CALIBRATION_FRACTION * len(y)))
    scale = conformal_quantile(scores[:count], level)  # (V,)
    evaluated = slice(count, None)
    inside = ((y - mean).abs() <= scale * half)[evaluated].double()
    own = scores[evaluated] <= 1
    return {"own_coverage": float(own.double().mean()), "own_width": float(2 * half[evaluated].mean()),
            "conformal_coverage": float(inside.mean()), "conformal_width": float((2 * scale * half)[evaluated].mean())}


def run_seed(dataset, epochs: int, seed: int, figures: Path | None = None) -> dict[str, Any]:
    """One seed's scores; with ``figures``, its two figures written into that folder."""
    graph = dataset.graph
    x_train, y_train = dataset.split("train")
    x_test, y_test = dataset.split("test")
    with seeded(seed):
        model = flow_model(graph, dataset.num_features)
    history = fit(model, graph, x_train, y_train,
                  TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, transport_weight=0.0, seed=seed, progress=False))
    results: dict[str, Any] = {"final_train_nll": history.last()["nll"]}

    with seeded(seed), torch.no_grad():
        # One row per test row, given its own targets: a latent from the law, then F^-1.
        flow_rows = model.generate(graph, model.latent.sample(y_test.to(model.dtype)))
        gaussian = TargetGaussian(x_train, y_train, seed=seed)
        nearest = NearestRows(x_train, y_train, seed=seed)
        gaussian_rows = torch.cat([gaussian.generate(y, 1) for y in y_test])
        nearest_rows = torch.cat([nearest.generate(y, 1) for y in y_test])
        flow_nll = float(-model.log_prob(graph, x_test, y_test).mean())
    results["generation"] = {
        "flow": {**generation_scores(x_test, flow_rows), "nll": flow_nll},
        "target_gaussian": {**generation_scores(x_test, gaussian_rows),
                            "nll": float(-gaussian.log_prob(x_test, y_test).mean())},
        "nearest_rows": generation_scores(x_test, nearest_rows),
    }

    prediction = model.predict(graph, x_test)
    lower, upper = model.predict_interval(graph, x_test, LEVEL)
    inside = ((y_test >= lower) & (y_test <= upper)).double()
    l2 = chosen_ridge(x_train, y_train, seed)
    results["prediction"] = {
        "flow": {"rmse": rmse(prediction, y_test), "coverage": float(inside.mean()),
                 "mean_width": float((upper - lower).mean())},
        "flow_calibrated": conformal_intervals(y_test.to(prediction.dtype), prediction, lower, upper, LEVEL),
        "linear": {"rmse": rmse(NodeRidge(x_train, y_train).predict(x_test), y_test)},
        "ridge": {"rmse": rmse(NodeRidge(x_train, y_train, l2=l2).predict(x_test), y_test), "l2": l2},
        "training_mean": {"rmse": rmse(y_train.mean(0).expand_as(y_test), y_test)},
    }
    # The ablation of what limits the posterior mean: the same trained flow's latent read by
    # ridge regression on all nodes, alone and beside the features.
    with torch.no_grad():
        h_train, h_test = (model.encode(graph, x, logdet=False)[0] for x in (x_train, x_test))
    for name, (f_train, f_test) in {"ridge_on_latent": (h_train, h_test),
                                    "ridge_on_features_and_latent": (torch.cat([x_train, h_train], -1),
                                                                     torch.cat([x_test, h_test], -1))}.items():
        penalty = chosen_ridge(f_train, y_train, seed)
        results["prediction"][name] = {"rmse": rmse(NodeRidge(f_train, y_train, l2=penalty).predict(f_test), y_test),
                                       "l2": penalty}
    if figures is not None:
        name = f"{dataset.name} (seed {seed}, {epochs} epoch{'s' if epochs > 1 else ''})"
        plots.target_sweep(x_test, y_test, flow_rows, figures / f"{dataset.name}_sweep.png",
                           feature_name=dataset.feature_names[0], title=name)
        plots.predicted_vs_true(y_test, prediction, lower, upper, figures / f"{dataset.name}_predictions.png",
                                level=LEVEL, title=name)
    return results


def summary(runs: list[dict[str, Any]]) -> list[str]:
    """One line per (task, method, score): mean ± std over the seeds."""
    lines = []
    for task in ("generation", "prediction"):
        for method, scores in runs[0][task].items():
            for name in scores:
                values = torch.tensor([run[task][method][name] for run in runs], dtype=torch.float64)
                spread = float(values.std()) if len(values) > 1 else math.nan
                lines.append(f"{task:11} {method:16} {name:18} {float(values.mean()):.5g} ± {spread:.2g}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    kwargs = dict(DATASETS[args.dataset])
    if args.data_root is not None and args.dataset in ("traffic", "solar"):
        kwargs["root"] = args.data_root
    dataset = load_dataset(args.dataset, **kwargs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_seed(dataset, args.epochs, seed, out if i == 0 else None) for i, seed in enumerate(args.seeds)]
    print(f"{args.dataset}: {len(args.seeds)} seed(s), {args.epochs} epochs")
    print("\n".join(summary(runs)))
    (out / f"{args.dataset}.json").write_text(json.dumps(dict(seeds=args.seeds, epochs=args.epochs, runs=runs), indent=1))


if __name__ == "__main__":
    main()
