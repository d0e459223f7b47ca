"""X | Y and Y | X for real-valued node targets: the flow against the flow-free baselines.

Trains the recipe's IGNN for real-valued targets (``recipe_model(..., num_classes=None)``: the law
``"linear_gaussian"`` with a learned map A y + b under 8 Lipschitz blocks of widths 32, the
graph-wide channel and layer, a per-node affine end; ``recipe_config``: no transport cost, and
the ridge readout on [X, F(X)] fitted once trained) on the training split, once per seed, and
prints on the test split, mean ± std over seeds, what ``dgl_iflow.evaluation.target_report``
measures (``dgl-iflow evaluate`` prints the same for one run), with more baselines beside it:

- generation, conditioning on the test targets (one generated row per test row, for the test
  row's own target vector, against the real test rows): MMD (every kernel), energy distance and
  the test NLL per sample. Baselines: ``TargetGaussian`` (mean linear in Y), ``NearestRows``
  (training rows of the nearest target vectors);
- prediction: RMSE of the model's prediction (the readout) against per-node linear and ridge
  regression on all features (``NodeRidge``, the penalty by leave-one-out error) and the
  training mean; and, to show what limits the law's own prediction, the posterior mean
  E[Y_v | H_v] and ridge regression on the same trained flow's latent of all nodes alone;
- intervals: coverage and width of the model's own, split conformal and adaptive conformal
  intervals per node on the test rows after the first 30 % (which calibrate).

    python benchmarks/continuous.py --dataset traffic --seeds 0 1 2 --out runs/continuous
    python benchmarks/continuous.py --dataset solar --seeds 0 1 2 --out runs/continuous

Writes ``OUT/<dataset>.json`` with every seed's numbers, and the first seed's figures:
``OUT/<dataset>_sweep.png`` (generated against real node features as the target sweeps its
range, one panel per node group) and ``OUT/<dataset>_predictions.png`` (predicted against true
targets with the calibrated 90 % intervals).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from dgl_iflow import plots
from dgl_iflow.metrics import generation_scores, rmse
from dgl_iflow.baselines import NearestRows, NodeRidge
from dgl_iflow.data import load_dataset
from dgl_iflow.evaluation import target_report
from dgl_iflow.files import json_text
from dgl_iflow.latents import LAWS
from dgl_iflow.recipe import TARGET_LAW, recipe_config, recipe_model
from dgl_iflow.training import fit
from dgl_iflow.training.common import seeded

#: The data sets with real-valued targets, and how they are loaded.
DATASETS = {"traffic": dict(target="next_flow"), "solar": dict(target="next_dhi"), "continuous_chordal": dict(p=31)}
#: Share of the test rows (the first ones) that calibrates the conformal intervals.
CALIBRATION_FRACTION = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's for the data set")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--latent", choices=sorted(name for name, law in LAWS.items() if not law.discrete), default=None,
                   help="the law of the targets (default: the recipe's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/continuous")
    return p.parse_args(argv)


def run_seed(dataset, epochs: int | None, seed: int, figures: Path | None = None,
             latent: str | None = None) -> dict[str, Any]:
    """One seed's scores; with ``figures``, its two figures written into that folder; ``latent``
    replaces the recipe's law."""
    graph = dataset.graph
    x_train, y_train = dataset.split("train")
    x_test, y_test = dataset.split("test")
    label_dim = y_train.shape[2] if y_train.dim() == 3 else None
    with seeded(seed):
        model = recipe_model(graph, dataset.num_features, None, label_dim=label_dim,
                             **({} if latent is None else dict(latent=latent)))
    config = recipe_config(dataset.name, seed=seed, progress=False, **({} if epochs is None else dict(epochs=epochs)))
    history = fit(model, graph, x_train, y_train, config)
    report = target_report(model, graph, x_train, y_train, x_test, y_test,
                           calibration_fraction=CALIBRATION_FRACTION, seed=seed)
    nearest = NearestRows(x_train, y_train, seed=seed)
    nearest_rows = torch.cat([nearest.generate(y, 1) for y in y_test])
    generation = {**report["generation"], "nearest_rows": generation_scores(x_test, nearest_rows)}

    # What limits the law's own prediction: its posterior mean reads one node's latent through a
    # fixed map; ridge regression reads the same latent of all nodes.
    with torch.no_grad():
        h_train, h_test = (model.encode(graph, x, logdet=False)[0] for x in (x_train, x_test))
    on_latent = NodeRidge.cross_validated(h_train, y_train)
    prediction = {
        **{name: {"rmse": value} for name, value in report["prediction"].items() if name != "ridge_l2"},
        "linear": {"rmse": rmse(NodeRidge(x_train, y_train).predict(x_test), y_test)},
        "posterior_mean": {"rmse": rmse(model.latent.posterior_mean(h_test), y_test)},
        "ridge_on_latent": {"rmse": rmse(on_latent.predict(h_test), y_test)},
    }
    prediction["ridge"]["l2"] = report["prediction"]["ridge_l2"]
    results = {"final_train_nll": history.last()["nll"], "generation": generation, "prediction": prediction,
               "intervals": report["intervals"]}
    if figures is not None:
        shown = report["figure"]
        name = f"{dataset.name} (seed {seed}, {config.epochs} epoch{'s' if config.epochs > 1 else ''})"
        plots.target_sweep(x_test, y_test, shown["generated"], figures / f"{dataset.name}_sweep.png",
                           feature_name=dataset.feature_names[0], title=name)
        plots.predicted_vs_true(shown["targets"], shown["prediction"], shown["lower"], shown["upper"],
                                figures / f"{dataset.name}_predictions.png", level=0.9,
                                title=f"{name}: calibrated intervals on the test rows after the first "
                                      f"{CALIBRATION_FRACTION:.0%}")
    return results


def summary(runs: list[dict[str, Any]]) -> list[str]:
    """One line per (task, method, score): mean ± std over the seeds."""
    lines = []
    for task in ("generation", "prediction", "intervals"):
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
    runs = [run_seed(dataset, args.epochs, seed, out if i == 0 else None, latent=args.latent)
            for i, seed in enumerate(args.seeds)]
    epochs = args.epochs or recipe_config(args.dataset).epochs
    latent = args.latent or TARGET_LAW
    print(f"{args.dataset}: {len(args.seeds)} seed(s), {epochs} epochs, latent {latent}")
    print("\n".join(summary(runs)))
    record = dict(seeds=args.seeds, epochs=epochs, latent=latent, runs=runs)
    (out / f"{args.dataset}.json").write_text(json_text(record))


if __name__ == "__main__":
    main()
