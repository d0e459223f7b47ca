"""JKO-iFlow against the discrete iGNN, both trained until validation stops improving.

For every data set and seed both conditional models are trained on the training split with
early stopping on a validation split carved from it (a seeded fifth), at (nearly) equal
parameter counts: the iGNN gets as many blocks as JKO-iFlow grew, of the same widths. Each
returned model is the one of its best validation NLL. Scored on the test split:

* test NLL of X | Y in nats per sample: exact divergence, integrated by dopri5 for JKO-iFlow
  (its model solver); the iGNN's log-det is exact;
* MMD^2 of generated against real graphs (``dgl_iflow.metrics.paper_protocol``: the three most
  frequent label vectors, alpha = 0.1);
* the test NLL after every JKO block and every iGNN epoch, measured as above, from which the
  mini-batches and training wall time to reach (a) the returned model's own test NLL and (b)
  the other model's are read. Wall time counts everything each trainer does
  (validation, inversion checks, pushing data through blocks) but not this benchmark's
  scoring.

Summaries give mean and standard deviation over seeds; figures (test NLL against mini-batches
and seconds, JKO-iFlow's per-block movements) go to ``--figures``::

    python benchmarks/jko_vs_discrete.py                          # toys, graphs, 3 seeds
    python benchmarks/jko_vs_discrete.py --datasets three_moons --seeds 0 --json runs/jko.json

Traffic and solar are read from ``$DGL_IFLOW_DATA`` (or ``--root``) and skipped, with a note,
if absent.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

from dgl_iflow.data import DataFileError, GraphDataset, holdout, load_dataset
from dgl_iflow.metrics import paper_protocol
from dgl_iflow.models import IGNN, JKOFlow
from dgl_iflow.plots import convergence, jko_movements
from dgl_iflow.training import JKOConfig, JKOTrainer, TrainConfig, fit
from dgl_iflow.transforms import InversionError

TOYS = ("checkerboard", "eight_gaussians", "three_moons", "rose", "tree")
GRAPHS = ("solar", "traffic")


@dataclass
class Splits:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


@dataclass
class Run:
    """One model trained on one data set with one seed.

    ``curve`` holds ``(mini-batches, seconds, test NLL)`` after every JKO block or iGNN epoch.
    """

    dataset: str
    model: str
    seed: int
    parameters: int
    blocks: int
    minibatches: int
    seconds: float
    test_nll: float
    mmd: float
    curve: list[tuple[int, float, float]]
    note: str = ""
    extra: dict = field(default_factory=dict)

    def reach(self, target: float) -> tuple[int, float] | None:
        """Mini-batches and seconds at the first curve point with test NLL <= ``target``.

        The returned model is one of the curve's points, so its own test NLL is always reached;
        the margin absorbs the last bits of a recomputation.
        """
        return next(((m, s) for m, s, nll in self.curve if nll <= target + 1e-6 * abs(target)), None)


class Clock:
    """Training wall time with this benchmark's scoring paused out."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.paused = 0.0

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.paused


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def mean_nll(model, data: GraphDataset, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean NLL of X | Y in nats per sample."""
    model.eval()
    return float(-model.log_prob(data.graph, x, y).mean())


def generation_mmd(model, data: GraphDataset, test: tuple[torch.Tensor, torch.Tensor], seed: int) -> tuple[float, str]:
    """MMD^2 of the reference protocol, or NaN with the reason if generation fails."""
    generator = torch.Generator().manual_seed(seed)

    def generate(labels: torch.Tensor, n: int) -> torch.Tensor:
        return model.sample(data.graph, labels, n, generator=generator)

    try:
        return float(paper_protocol(*test, generate)["mmd"]), ""
    except InversionError as err:
        return math.nan, f"generation failed: {err}"


def splits(data: GraphDataset, seed: int, validation_fraction: float) -> Splits:
    train, val = holdout(*data.split("train"), validation_fraction, seed)
    return Splits(train, val, data.split("test"))


def run_jko(name: str, data: GraphDataset, parts: Splits, seed: int, options: argparse.Namespace,
            budget: dict) -> Run:
    """Grow JKO-iFlow with early stopping, re-space once (kept only if validation improves)."""
    torch.manual_seed(seed)
    model = JKOFlow(data.graph, data.num_features, data.num_classes, conv=budget["conv"],
                    hidden_feats=(options.width, options.width))
    config = JKOConfig(
        iterations=options.jko_iterations, batch_size=budget["batch_size"], max_blocks=budget["max_blocks"],
        min_blocks=budget["min_blocks"], lr=options.jko_lr, patience=options.jko_patience,
        eval_every=options.eval_every, reparametrize_rounds=1, round_trip_tol=options.round_trip_tol,
        max_steps=options.max_steps,
        seed=seed, progress=options.progress,
    )
    clock, curve, solver = Clock(), [], model.solver

    def score(record) -> None:
        with clock.pause():  # by the evaluation solver, not the training map the trainer set
            model.set_solver(solver)
            curve.append((trainer.history.minibatches, clock.elapsed(), mean_nll(model, data, *parts.test)))
            model.set_solver("rk4")

    trainer = JKOTrainer(model, data.graph, *parts.train, config=config, callback=score,
                         x_val=parts.val[0], y_val=parts.val[1])
    history = trainer.fit()
    seconds = clock.elapsed()
    test_nll = mean_nll(model, data, *parts.test)
    mmd, note = generation_mmd(model, data, parts.test, seed)
    run = Run(name, "JKO-iFlow", seed, count_parameters(model), len(model.blocks), history.minibatches, seconds,
              test_nll, mmd, curve, note, extra=dict(
                  step_sizes=model.step_sizes, movements=history.movements(),
                  round_trip=max(r.round_trip for r in history.stage()), dropped_blocks=len(history.discarded),
                  decisions=[asdict(d) for d in history.decisions],
                  block_minibatches=[r.minibatches for r in history.records]))
    if seed == options.seeds[0]:
        latents = model.latent.sample(parts.test[1][:1000], generator=torch.Generator().manual_seed(seed))
        try:
            generated = model.generate(data.graph, latents)
        except InversionError as err:  # the figure still shows the movements
            print(f"{name}: no samples in the figure: {err}")
            generated = None
        jko_movements(history, f"{options.figures}/{name}_movements.png", generated=generated,
                      real=None if generated is None else parts.test[0][:1000], title=f"JKO-iFlow on {name}")
    return run


def run_ignn(name: str, data: GraphDataset, parts: Splits, seed: int, options: argparse.Namespace,
             budget: dict, num_blocks: int) -> Run:
    """Train the iGNN with early stopping on the validation NLL."""
    torch.manual_seed(seed)
    model = IGNN(data.graph, data.num_features, data.num_classes, conv=budget["conv"], num_blocks=num_blocks,
                 hidden_feats=(options.width, options.width), lipschitz_coeff=options.ignn_lipschitz)
    batches_per_epoch = math.ceil(len(parts.train[0]) / budget["batch_size"])
    clock, curve = Clock(), []

    def score(epoch: int, record: dict) -> None:
        with clock.pause():
            curve.append((epoch * batches_per_epoch, clock.elapsed(), mean_nll(model, data, *parts.test)))

    config = TrainConfig(epochs=options.ignn_epochs, batch_size=budget["batch_size"], lr=options.ignn_lr,
                         transport_weight=options.ignn_transport_weight, patience=options.ignn_patience, seed=seed,
                         progress=options.progress)
    history = fit(model, data.graph, *parts.train, config, x_val=parts.val[0], y_val=parts.val[1], callback=score)
    seconds = clock.elapsed()
    test_nll = mean_nll(model, data, *parts.test)
    mmd, note = generation_mmd(model, data, parts.test, seed)
    # The best epoch's weights, before fit's final invertibility check shrank any block.
    selected = curve[history.best_epoch - 1][2]
    if history.final_shrinks:
        note = "; ".join(filter(None, [note, f"{history.final_shrinks} shrinks in the final inversion check; "
                                             f"test NLL {selected:.3f} before it"]))
    return Run(name, "iGNN", seed, count_parameters(model), num_blocks, len(history.epochs) * batches_per_epoch,
               seconds, test_nll, mmd, curve, note,
               extra=dict(best_epoch=history.best_epoch, epochs=len(history.epochs),
                          final_shrinks=history.final_shrinks, nll_before_final_check=selected))


_TOY_BUDGET = dict(conv="mlp", batch_size=200, max_blocks=8, min_blocks=3)
_GRAPH_BUDGET = dict(conv="l3", batch_size=128, max_blocks=6, min_blocks=2)
#: Layer, batch size and block range of JKO-iFlow per data set (the iGNN takes its block count).
BUDGETS = {**{name: _TOY_BUDGET for name in TOYS}, **{name: _GRAPH_BUDGET for name in GRAPHS}}


def load(name: str, seed: int, options: argparse.Namespace) -> GraphDataset:
    if name in TOYS:
        return load_dataset(name, n=options.toy_samples, seed=seed)
    return load_dataset(name, root=options.root)


def minibatches_to(run: Run, target: Run) -> float:
    """Mini-batches ``run`` took to reach ``target``'s test NLL; ``nan`` if it never did."""
    reached = run.reach(target.test_nll)
    return math.nan if reached is None else reached[0]


def reach_text(reached: tuple[int, float] | None) -> str:
    return "not reached" if reached is None else f"{reached[0]} / {reached[1]:.0f} s"


def runs_table(runs: list[Run]) -> str:
    """One row per run; "own" and "other's" are mini-batches / seconds to the returned model's
    test NLL and to the other model's."""
    lines = [
        "| data | model | seed | params | blocks | mini-batches | train s | test NLL | MMD^2 | to own | to other's | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for run in runs:
        other = next(r for r in runs if r.dataset == run.dataset and r.seed == run.seed and r.model != run.model)
        lines.append(
            f"| {run.dataset} | {run.model} | {run.seed} | {run.parameters} | {run.blocks} | {run.minibatches} "
            f"| {run.seconds:.0f} | {run.test_nll:.3f} | {run.mmd:.4f} | {reach_text(run.reach(run.test_nll))} "
            f"| {reach_text(run.reach(other.test_nll))} | {run.note} |")
    return "\n".join(lines)


def spread(values: list[float], digits: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    text = f"{statistics.fmean(finite):.{digits}f}"
    if len(finite) > 1:
        text += f" ± {statistics.stdev(finite):.{digits}f}"
    return text + ("" if len(finite) == len(values) else f" ({len(values) - len(finite)} failed)")


def summary_table(runs: list[Run]) -> str:
    """Mean ± std over seeds, and the mini-batch factor of the claim.

    "factor to own best" is the iGNN's mini-batches to its own test NLL over JKO-iFlow's to its
    own; "JKO-iFlow reached iGNN's" gives JKO-iFlow's mini-batches and training time to reach the
    iGNN's test NLL as fractions of the iGNN's own to reach it (below 1: JKO-iFlow got there
    sooner).
    """
    lines = [
        "| data | seeds | JKO-iFlow test NLL | iGNN test NLL | JKO-iFlow MMD^2 | iGNN MMD^2 "
        "| JKO-iFlow mini-batches | iGNN mini-batches | JKO-iFlow s | iGNN s | factor to own best "
        "| JKO-iFlow reached iGNN's | iGNN reached JKO-iFlow's |",
        "|---|---:|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r.dataset for r in runs):
        pairs = []
        for seed in dict.fromkeys(r.seed for r in runs if r.dataset == name):
            jko, ignn = (next(r for r in runs if (r.dataset, r.seed, r.model) == (name, seed, model))
                         for model in ("JKO-iFlow", "iGNN"))
            pairs.append((jko, ignn))
        factors = [minibatches_to(ignn, ignn) / minibatches_to(jko, jko) for jko, ignn in pairs]
        jko_reached = [jko.reach(ignn.test_nll) for jko, ignn in pairs]
        ignn_reached = [ignn.reach(jko.test_nll) for jko, ignn in pairs]
        reached_pairs = [(jko, ignn) for jko, ignn in pairs if jko.reach(ignn.test_nll)]
        ratio = [minibatches_to(jko, ignn) / minibatches_to(ignn, ignn) for jko, ignn in reached_pairs]
        time_ratio = [jko.reach(ignn.test_nll)[1] / ignn.reach(ignn.test_nll)[1] for jko, ignn in reached_pairs]
        lines.append(
            f"| {name} | {len(pairs)} | {spread([j.test_nll for j, _ in pairs], 3)} "
            f"| {spread([i.test_nll for _, i in pairs], 3)} | {spread([j.mmd for j, _ in pairs], 4)} "
            f"| {spread([i.mmd for _, i in pairs], 4)} | {spread([j.minibatches for j, _ in pairs], 0)} "
            f"| {spread([i.minibatches for _, i in pairs], 0)} | {spread([j.seconds for j, _ in pairs], 0)} "
            f"| {spread([i.seconds for _, i in pairs], 0)} | {spread(factors, 1)} "
            f"| {sum(r is not None for r in jko_reached)} of {len(pairs)}"
            + (f", at {spread(ratio, 2)} of the iGNN's mini-batches and {spread(time_ratio, 2)} of its time"
               if ratio else "")
            + f" | {sum(r is not None for r in ignn_reached)} of {len(pairs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=[*TOYS, *GRAPHS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=32, help="convolution and hidden width of both models")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--jko-lr", type=float, default=2e-2, help="Adam learning rate of JKO-iFlow")
    parser.add_argument("--jko-iterations", type=int, default=300, help="most mini-batches per JKO block")
    parser.add_argument("--jko-patience", type=int, default=4, help="JKO validation measurements without gain")
    parser.add_argument("--eval-every", type=int, default=10, help="mini-batches between JKO validation measurements")
    parser.add_argument("--round-trip-tol", type=float, default=1e-3,
                        help="JKO stiffness control (JKOConfig); without it the RK4 map trained on drifts from the "
                             "flow that dopri5 evaluates")
    parser.add_argument("--max-steps", type=int, default=24, help="most RK4 sub-steps per JKO block")
    parser.add_argument("--ignn-lr", type=float, default=1e-3, help="Adam learning rate of the iGNN (its default)")
    parser.add_argument("--ignn-epochs", type=int, default=400, help="most iGNN epochs")
    parser.add_argument("--ignn-patience", type=int, default=25, help="iGNN epochs without validation gain")
    parser.add_argument("--ignn-transport-weight", type=float, default=0.0,
                        help="iGNN transport weight; 0 gave it a lower test NLL than its default 1")
    parser.add_argument("--ignn-lipschitz", type=float, default=None,
                        help="spectral normalization of the iGNN's blocks (the traffic recipe: 0.97); default none")
    parser.add_argument("--toy-samples", type=int, default=2000)
    parser.add_argument("--root", default=None, help="data root of traffic and solar; default $DGL_IFLOW_DATA")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", default=None, help="also write every run, with curves, here")
    parser.add_argument("--figures", default="runs/jko_vs_discrete", help="folder of the PNG figures")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)

    runs: list[Run] = []
    started = time.perf_counter()
    for name in options.datasets:
        budget = BUDGETS[name]
        try:
            load(name, options.seeds[0], options)
        except DataFileError as err:
            print(f"skipping {name}: {err}")
            continue
        for seed in options.seeds:
            data = load(name, seed, options)
            parts = splits(data, seed, options.validation_fraction)
            jko = run_jko(name, data, parts, seed, options, budget)
            runs += [jko, run_ignn(name, data, parts, seed, options, budget, jko.blocks)]
            print(runs_table(runs[-2:]), flush=True)
        done = [r for r in runs if r.dataset == name]
        convergence({model: [r.curve for r in done if r.model == model] for model in ("JKO-iFlow", "iGNN")},
                    f"{options.figures}/{name}_convergence.png", title=f"{name}: test NLL while training")
        if options.json:
            with open(options.json, "w") as handle:
                json.dump([asdict(r) for r in runs], handle, indent=1)
    print(f"\nall data sets, {time.perf_counter() - started:.0f} s wall\n")
    print(runs_table(runs))
    print()
    print(summary_table(runs))


if __name__ == "__main__":
    main()
