"""JKO-iFlow against the discrete iGNN flow at (nearly) equal parameter counts.

For every data set both conditional models are trained on the training split and scored on the
test split: exact NLL of X | Y in nats per sample, MMD^2 of generated against real graphs
(``dgl_iflow.metrics.paper_protocol``: the three most frequent label vectors, alpha = 0.1),
mini-batches and training wall time. The iGNN gets ``--ignn-factor`` times the mini-batches of
JKO-iFlow and is scored every epoch, so the table also says how many mini-batches (and seconds)
it needed to reach JKO-iFlow's test NLL, if it did.

The default run takes a few minutes on 2 cores; ``--scale`` multiplies every budget::

    python benchmarks/jko_vs_discrete.py                      # toys and traffic, defaults
    python benchmarks/jko_vs_discrete.py --scale 4 --ignn-factor 10 --json runs/jko.json

Traffic is read from ``$DGL_IFLOW_DATA`` (or ``--root``) and skipped, with a note, if absent.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field

import torch

from dgl_iflow.data import DataFileError, GraphDataset, load_dataset
from dgl_iflow.metrics import paper_protocol
from dgl_iflow.models import IGNN, JKOFlow
from dgl_iflow.plots import jko_movements
from dgl_iflow.training import JKOConfig, JKOTrainer, TrainConfig, fit, reparametrize
from dgl_iflow.transforms import InversionError

TOYS = ("checkerboard", "eight_gaussians", "three_moons")


@dataclass
class Row:
    """One model on one data set."""

    dataset: str
    model: str
    parameters: int
    blocks: int
    minibatches: int
    seconds: float
    test_nll: float
    mmd: float
    note: str = ""
    extra: dict = field(default_factory=dict)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def test_nll(model, data: GraphDataset) -> float:
    """Mean exact NLL of X | Y over the test split, nats per sample."""
    x, y = data.split("test")
    return float(-model.log_prob(data.graph, x, y).mean())


def generation_mmd(model, data: GraphDataset, seed: int) -> tuple[float, str]:
    """MMD^2 of the reference protocol, or NaN with the reason if generation fails."""
    x, y = data.split("test")
    generator = torch.Generator().manual_seed(seed)

    def generate(labels: torch.Tensor, n: int) -> torch.Tensor:
        return model.sample(data.graph, labels, n, generator=generator)

    try:
        return float(paper_protocol(x, y, generate)["mmd"]), ""
    except RuntimeError as err:  # the iGNN's fixed-point inverse may fail to converge
        return math.nan, f"generation failed: {type(err).__name__}"


def run_jko(name: str, data: GraphDataset, options: argparse.Namespace, budget: dict) -> list[Row]:
    """Grow JKO-iFlow, score it, re-space the grid once, retrain, score again."""
    torch.manual_seed(options.seed)
    model = JKOFlow(data.graph, data.num_features, data.num_classes, conv=budget["conv"],
                    hidden_feats=(options.width, options.width))
    # A larger learning rate than the library default, and half the blocks at least: the default
    # budget gives each block only a few dozen mini-batches to take its whole JKO step.
    config = JKOConfig(
        iterations=budget["iterations"], retrain_iterations=max(1, budget["iterations"] // 2),
        batch_size=budget["batch_size"], max_blocks=budget["max_blocks"], min_blocks=budget["max_blocks"] // 2,
        lr=options.jko_lr, seed=options.seed,
        progress=options.progress,
    )
    trainer = JKOTrainer(model, data.graph, *data.split("train"), config=config)
    trainer.grow()
    rows = []
    for stage in ("grow", "reparametrize 1"):
        if stage != "grow":
            reparametrize(model, trainer.history.movements(), config.eta)
            trainer.retrain(stage)
        history = trainer.history
        mmd, note = generation_mmd(model, data, options.seed)
        rows.append(Row(
            name, "JKO-iFlow" if stage == "grow" else "JKO-iFlow +reparam", count_parameters(model),
            len(model.blocks), history.minibatches, history.seconds, test_nll(model, data), mmd, note,
            extra=dict(train_nll=history.train_nll(), step_sizes=model.step_sizes,
                       movements=history.movements(), round_trip=max(r.round_trip for r in history.stage())),
        ))
    x_test, y_test = data.split("test")
    latents = model.latent.sample(y_test[:1000].to(model.device), generator=torch.Generator().manual_seed(options.seed))
    try:
        generated = model.generate(data.graph, latents)
    except InversionError as err:  # the figure still shows the movements
        print(f"{name}: no samples in the figure: {err}")
        generated = None
    figure = jko_movements(history, f"{options.figures}/{name}_movements.png", generated=generated,
                           real=None if generated is None else x_test[:1000], title=f"JKO-iFlow on {name}")
    print(f"wrote {figure}")
    return rows


def run_ignn(name: str, data: GraphDataset, options: argparse.Namespace, budget: dict,
             num_blocks: int, minibatches: int, target_nll: float) -> Row:
    """Train the iGNN for ``minibatches`` and note when its test NLL first reaches ``target_nll``."""
    x_train, y_train = data.split("train")
    torch.manual_seed(options.seed)
    model = IGNN(data.graph, data.num_features, data.num_classes, conv=budget["conv"], num_blocks=num_blocks,
                 hidden_feats=(options.width, options.width))
    batches_per_epoch = math.ceil(len(x_train) / budget["batch_size"])
    epochs = max(1, math.ceil(minibatches / batches_per_epoch))
    trace = dict(seconds=0.0, reached=None, curve=[])

    def score(epoch: int, record: dict) -> None:
        trace["seconds"] += record["seconds"]
        model.eval()
        nll = test_nll(model, data)
        trace["curve"].append((epoch * batches_per_epoch, round(nll, 4)))
        if trace["reached"] is None and nll <= target_nll:
            trace["reached"] = (epoch * batches_per_epoch, trace["seconds"])

    config = TrainConfig(epochs=epochs, batch_size=budget["batch_size"], seed=options.seed, progress=options.progress)
    fit(model, data.graph, x_train, y_train, config, callback=score)
    mmd, note = generation_mmd(model, data, options.seed)
    reached = trace["reached"]
    note = "; ".join(filter(None, [
        note, f"reached JKO-iFlow's test NLL after {reached[0]} mini-batches, {reached[1]:.0f} s"
        if reached else "never reached JKO-iFlow's test NLL",
    ]))
    return Row(name, "iGNN", count_parameters(model), num_blocks, epochs * batches_per_epoch, trace["seconds"],
               test_nll(model, data), mmd, note, extra=dict(curve=trace["curve"], reached=reached))


def budgets(options: argparse.Namespace) -> dict[str, dict]:
    scale = options.scale
    toy = dict(conv="mlp", iterations=round(30 * scale), batch_size=200, max_blocks=6)
    graph = dict(conv="l3", iterations=round(15 * scale), batch_size=128, max_blocks=4)
    return {**{name: toy for name in TOYS}, "traffic": graph}


def load(name: str, options: argparse.Namespace) -> GraphDataset:
    if name in TOYS:
        return load_dataset(name, n=options.toy_samples, seed=options.seed)
    return load_dataset(name, root=options.root)


def markdown(rows: list[Row]) -> str:
    """The table; "round trip" is JKO-iFlow's largest backward(forward(x)) error per block."""
    lines = [
        "| data | model | params | blocks | mini-batches | train s | test NLL | MMD^2 | round trip | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        round_trip = f"{r.extra['round_trip']:.1e}" if "round_trip" in r.extra else "-"
        lines.append(f"| {r.dataset} | {r.model} | {r.parameters} | {r.blocks} | {r.minibatches} | {r.seconds:.0f} "
                     f"| {r.test_nll:.3f} | {r.mmd:.4f} | {round_trip} | {r.note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=[*TOYS, "traffic"])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every training budget")
    parser.add_argument("--ignn-factor", type=float, default=1.5,
                        help="iGNN mini-batches as a multiple of JKO-iFlow's")
    parser.add_argument("--width", type=int, default=32, help="convolution and hidden width of both models")
    parser.add_argument("--jko-lr", type=float, default=2e-2, help="Adam learning rate of JKO-iFlow")
    parser.add_argument("--toy-samples", type=int, default=2000)
    parser.add_argument("--root", default=None, help="data root of traffic; default $DGL_IFLOW_DATA")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", default=None, help="also write every row, with curves, here")
    parser.add_argument("--figures", default="runs/jko_vs_discrete",
                        help="folder of the per-block movement figures (PNG)")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)

    rows: list[Row] = []
    started = time.perf_counter()
    for name in options.datasets:
        try:
            data = load(name, options)
        except DataFileError as err:
            print(f"skipping {name}: {err}")
            continue
        budget = budgets(options)[name]
        jko_rows = run_jko(name, data, options, budget)
        final = jko_rows[-1]
        rows.extend(jko_rows)
        rows.append(run_ignn(name, data, options, budget, final.blocks,
                             round(options.ignn_factor * final.minibatches), final.test_nll))
        print(markdown([r for r in rows if r.dataset == name]), flush=True)
    print(f"\nall data sets, {time.perf_counter() - started:.0f} s wall\n")
    print(markdown(rows))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump([r.__dict__ for r in rows], handle, indent=1)


if __name__ == "__main__":
    main()
