"""Speed and memory of dgl_iflow on the paper's traffic configuration, next to the reference.

One command::

    .venv/bin/python benchmarks/traffic_speed.py            # cheb and l3, 2 epochs, 2 threads

trains IGNN on the traffic training split (3070 samples) with the reference configuration:
40 invertible blocks, graph conv 2 -> 64 (Chebyshev k=3, or L3Net orders 0,1,2), Linear 64 -> 64,
Linear 64 -> 2, batch 200, Adam lr 1e-4 and weight decay 5e-4, classification weight 0.1,
transport weight 1, exact log-determinant. Each configuration runs in a fresh subprocess so that
its peak RSS (``ru_maxrss``) is its own. Printed per configuration: flow parameters, seconds per
epoch (median over epochs; wall clock and process CPU time), peak RSS, seconds to generate 1000
samples by the fixed-point inverse with the error it reached (``max ||F(F^-1(h)) - h|| / ||h||``),
the round trip ``F^-1(F(x))`` of the 1320 test samples, and the reference's numbers with ratios.

Options: ``--epochs``, ``--threads``, ``--convs``, ``--logdet``, ``--json FILE``, and ``--repo
PATH`` to benchmark another checkout of the package (for before/after tables). The real data is
read from ``$DGL_IFLOW_DATA``, else ``../shared/data`` beside the checkout when present.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The paper's reference implementation on a 2-core machine (docs/performance.md).
REFERENCE = {
    "cheb": dict(params=189_560, epoch_s=35.2, rss_gb=7.1, generate_s=35.0, invert_test_s=201.0),
    "l3": dict(params=216_560, epoch_s=29.0, rss_gb=5.6, generate_s=31.0, invert_test_s=181.0),
}
TARGETS = dict(epoch_s=6.0, rss_gb=1.0, generate_s=3.0, inverse_error=1e-5)
#: Latent means and variance of the reference on traffic: sigma^2 = ||mu0 - mu1|| / 8.
MEANS = ((2.0, -2.0), (-2.0, 2.0))
SIGMA = (((4.0 ** 2 + 4.0 ** 2) ** 0.5) / 8.0) ** 0.5


def data_root() -> str | None:
    if os.environ.get("DGL_IFLOW_DATA"):
        return os.environ["DGL_IFLOW_DATA"]
    candidate = REPO.parent / "shared" / "data"
    return str(candidate) if (candidate / "traffic").is_dir() else None


# ----------------------------------------------------------------------------- worker
def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from dgl_iflow.data import load_dataset
    from dgl_iflow.models import IGNN
    from dgl_iflow.training import TrainConfig, fit

    started = time.perf_counter()
    data = load_dataset("traffic", root=data_root())
    x_train, y_train = data.split("train")
    x_test, y_test = data.split("test")
    graph = data.graph
    torch.manual_seed(args.seed)
    model = IGNN(
        graph, feats=2, num_classes=2, conv=args.conv, num_blocks=args.blocks, hidden_feats=(64, 64),
        cheb_k=3, orders=(0, 1, 2), logdet=args.logdet, means=MEANS, sigma=SIGMA,
    )
    params = sum(p.numel() for p in model.flow.parameters())
    rss_before_training = peak_rss_gb()

    marks = [(time.perf_counter(), time.process_time())]

    def callback(epoch: int, record: dict) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=1e-4, weight_decay=5e-4,
        lr_schedule="constant", classification_weight=0.1, transport_weight=1.0,
        inversion_check_samples=0, progress=False, seed=args.seed,
    )
    history = fit(model, graph, x_train, y_train, config, callback=callback)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    rss_training = peak_rss_gb()

    model.eval()
    with torch.no_grad():
        # Generation: 1000 latents given the most frequent test label vector, inverted.
        labels, counts = torch.unique(y_test, dim=0, return_counts=True)
        y_top = labels[counts.argmax()]
        generator = torch.Generator().manual_seed(args.seed)
        h = model.latent.sample(y_top, args.samples, generator=generator)
        t0 = time.perf_counter()
        x_gen = model.generate(graph, h, tol=args.tol, max_iter=args.max_iter)
        generate_s = time.perf_counter() - t0
        iterations = [block.last_inverse_iterations for block in model.flow.blocks]
        h_back = model.encode(graph, x_gen, logdet=False)[0]
        # Per sample (n, V, d): norms over nodes and features.
        gen_error = float(((h_back - h).pow(2).sum((1, 2)).sqrt() / h.pow(2).sum((1, 2)).sqrt()).max())
        # Round trip of the test split.
        x_test = x_test.to(torch.get_default_dtype())
        t0 = time.perf_counter()
        z = model.encode(graph, x_test, logdet=False)[0]
        x_back = model.generate(graph, z, tol=args.tol, max_iter=args.max_iter)
        invert_test_s = time.perf_counter() - t0
        test_error = float(((x_back - x_test).pow(2).sum((1, 2)).sqrt() / x_test.pow(2).sum((1, 2)).sqrt()).max())
    return dict(
        conv=args.conv, logdet=model.logdet_mode, params=params, epochs=args.epochs,
        batches_per_epoch=-(-len(x_train) // args.batch_size),
        epoch_wall_s=wall, epoch_cpu_s=cpu, epoch_s=statistics.median(wall), epoch_cpu_median_s=statistics.median(cpu),
        loss=[round(e["loss"], 4) for e in history.epochs],
        rss_gb=peak_rss_gb(), rss_before_training_gb=rss_before_training, rss_training_gb=rss_training,
        generate_s=generate_s, inverse_iterations_mean=statistics.mean(iterations), inverse_iterations_max=max(iterations),
        inverse_error=gen_error, invert_test_s=invert_test_s, test_roundtrip_error=test_error,
        threads=torch.get_num_threads(), torch=torch.__version__, setup_s=marks[0][0] - started,
    )


# ----------------------------------------------------------------------------- driver
def run_configuration(args: argparse.Namespace, conv: str) -> dict:
    env = dict(os.environ)
    repo = str(Path(args.repo).resolve()) if args.repo else str(REPO)
    env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    root = data_root()
    if root:
        env["DGL_IFLOW_DATA"] = root
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", "--conv", conv,
        "--epochs", str(args.epochs), "--threads", str(args.threads), "--blocks", str(args.blocks),
        "--batch-size", str(args.batch_size), "--samples", str(args.samples), "--logdet", args.logdet,
        "--tol", str(args.tol), "--max-iter", str(args.max_iter), "--seed", str(args.seed),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=repo)
    if done.returncode != 0:
        raise RuntimeError(f"{conv} worker failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(reference: float, ours: float) -> str:
    return f"{reference / ours:.1f}x" if ours > 0 else "-"


def report(results: dict[str, dict]) -> str:
    lines = ["| | " + " | ".join(f"{conv} ref | {conv} ours | gain" for conv in results) + " |",
             "|---|" + "---|---|---|" * len(results)]

    def row(name: str, ref_key: str | None, fmt, key: str, gain: bool = True) -> None:
        cells = []
        for conv, res in results.items():
            ref = REFERENCE[conv].get(ref_key) if ref_key else None
            cells += [fmt(ref) if ref is not None else "-", fmt(res[key]),
                      ratio(ref, res[key]) if gain and ref is not None else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("flow parameters", "params", lambda v: f"{v:,}", "params", gain=False)
    row("seconds per epoch (median, wall)", "epoch_s", lambda v: f"{v:.2f}", "epoch_s")
    row("CPU seconds per epoch (process)", None, lambda v: f"{v:.2f}", "epoch_cpu_median_s", gain=False)
    row("peak RSS (GB)", "rss_gb", lambda v: f"{v:.2f}", "rss_gb")
    row("generate 1000 samples (s)", "generate_s", lambda v: f"{v:.2f}", "generate_s")
    row("generation inverse error", None, lambda v: f"{v:.1e}", "inverse_error", gain=False)
    row("invert the 1320 test samples (s)", "invert_test_s", lambda v: f"{v:.2f}", "invert_test_s")
    row("test round-trip error", None, lambda v: f"{v:.1e}", "test_roundtrip_error", gain=False)
    row("fixed-point iterations per block (mean)", None, lambda v: f"{v:.1f}", "inverse_iterations_mean", gain=False)
    return "\n".join(lines)


def verdicts(results: dict[str, dict]) -> list[str]:
    """One line per target: the measured figures and whether they meet it."""
    def line(name: str, values: list[float], limit: float, unit: str, fmt: str = ".2f") -> str:
        met = all(value <= limit for value in values)
        suffix = f" {unit}" if unit else ""
        figures = " / ".join(f"{value:{fmt}}" for value in values)
        why = "" if met else " (what limits it: docs/performance.md)"
        return f"target {name} <= {limit:{fmt}}{suffix}: {figures}{suffix}, {'met' if met else 'MISSED'}{why}"

    convs = " / ".join(results)
    return [
        f"targets for {convs}:",
        line("seconds per epoch", [r["epoch_s"] for r in results.values()], TARGETS["epoch_s"], "s"),
        line("peak RSS", [r["rss_gb"] for r in results.values()], TARGETS["rss_gb"], "GB"),
        line("generate 1000 samples", [r["generate_s"] for r in results.values()], TARGETS["generate_s"], "s"),
        line("inverse error", [r["inverse_error"] for r in results.values()], TARGETS["inverse_error"], "", ".0e"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--convs", nargs="+", default=["cheb", "l3"], choices=["cheb", "l3"])
    parser.add_argument("--conv", default="cheb", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--logdet", default="exact", choices=["exact", "estimator"])
    parser.add_argument("--tol", type=float, default=1e-6, help="relative residual per block of the inverse")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repo", help="checkout whose dgl_iflow to benchmark (default: this one)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    load = os.getloadavg()[0]
    print(f"traffic, {args.blocks} blocks of width 64, batch {args.batch_size}, {args.threads} threads, "
          f"{args.epochs} epochs, logdet={args.logdet}; load average {load:.1f} on {os.cpu_count()} CPUs")
    if load > (os.cpu_count() or 1):
        print("warning: the machine is busy; wall-clock times are inflated (see the CPU-time row)")
    results = {}
    for conv in args.convs:
        results[conv] = run_configuration(args, conv)
        res = results[conv]
        print(f"{conv}: {res['epoch_s']:.2f} s/epoch (epochs {[round(s, 2) for s in res['epoch_wall_s']]}), "
              f"peak RSS {res['rss_gb']:.2f} GB, generate {res['generate_s']:.2f} s "
              f"(error {res['inverse_error']:.1e}), logdet={res['logdet']}", flush=True)
    print()
    print(report(results))
    print()
    for line in verdicts(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
