"""Speed and memory of dgl_iflow on the paper's traffic configuration, next to the reference.

One command::

    .venv/bin/python benchmarks/traffic_speed.py            # cheb and l3, 2 epochs, 2 threads

trains IGNN on the traffic training split (3070 samples) with the reference configuration:
40 invertible blocks, graph conv 2 -> 64 (Chebyshev k=3, or L3Net orders 0,1,2), Linear 64 -> 64,
Linear 64 -> 2, batch 200, Adam lr 1e-4 and weight decay 5e-4, classification weight 0.1,
transport weight 1, exact log-determinant. Each configuration runs in a fresh subprocess so that
its peak RSS (``ru_maxrss``) is its own. Printed per configuration: flow parameters, seconds per
epoch (median over the epochs after the first, which holds the warm-up, as the reference harness
takes it; wall clock and process CPU time), peak RSS, seconds to generate 1000
samples by the fixed-point inverse with the error it reached (``max ||F(F^-1(h)) - h|| / ||h||``),
and the round trip ``F^-1(F(x))`` of the 1320 test samples.

Ratios against the paper's reference implementation are printed only from a side-by-side run:
``--reference FILE`` takes the JSON that ``../shared/refbench/ref_speed.py --json FILE`` wrote
on this machine (run the two alternately, A B A B, on an idle machine; the refbench README says
how). Without it the figures are absolute. Both runs' dates and the machine's load when they
started are printed and kept in ``--json``.

``--fit-checks`` also times every configuration under ``fit``'s default per-epoch inversion
checks and prints their cost against the bare training loop.

Options: ``--epochs``, ``--threads``, ``--convs``, ``--logdet``, ``--json FILE``, and ``--repo
PATH`` to benchmark another checkout of the package (for before/after tables). The real data is
read from ``$DGL_IFLOW_DATA``, else ``../shared/data`` beside the checkout when present.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Issue #14: speed-ups over the reference measured side by side, absolute memory and accuracy,
#: and what fit's per-epoch inversion checks may cost over the bare loop.
TARGETS = dict(epoch_speedup=5.0, generate_speedup=10.0, rss_gb=1.0, inverse_error=1e-5, checks_overhead=1.2)
#: Latent means and variance of the reference on traffic: sigma^2 = ||mu0 - mu1|| / 8.
MEANS = ((2.0, -2.0), (-2.0, 2.0))
SIGMA = (((4.0 ** 2 + 4.0 ** 2) ** 0.5) / 8.0) ** 0.5


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by anything on the machine over ``seconds`` (Linux ``/proc/stat``)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return None
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def machine_state() -> dict:
    """When, and how loaded the machine was, as a run starts."""
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                load_average=os.getloadavg()[0], busy_cores=busy_cores(), cpus=os.cpu_count())


def load_reference(path: str) -> dict:
    """Results of ``ref_speed.py --json`` per conv, with the run's date and load where known.

    The harness does not write its date or load: the file's modification time stands for the
    date, and the load is marked unknown.
    """
    results = json.loads(Path(path).read_text())
    if not isinstance(results, dict) or not all(isinstance(r, dict) and "epoch_s" in r for r in results.values()):
        raise SystemExit(f"{path} is not a ref_speed.py --json file (one object with epoch_s per conv)")
    modified = datetime.datetime.fromtimestamp(Path(path).stat().st_mtime, datetime.timezone.utc)
    state = results.pop("machine", None) or dict(date=modified.isoformat(timespec="seconds"), load_average=None,
                                                 busy_cores=None)
    return dict(machine=state, results=results)


def data_root() -> str | None:
    if os.environ.get("DGL_IFLOW_DATA"):
        return os.environ["DGL_IFLOW_DATA"]
    candidate = REPO.parent / "shared" / "data"
    return str(candidate) if (candidate / "traffic").is_dir() else None


# ----------------------------------------------------------------------------- worker
def steady(epochs: list[float]) -> list[float]:
    """The epochs after the first (which holds the warm-up), or the only one."""
    return epochs[1:] if len(epochs) > 1 else epochs



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

    checks = {} if args.checks else dict(inversion_check_samples=0)  # fit's defaults, or the bare loop
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=1e-4, weight_decay=5e-4,
        lr_schedule="constant", classification_weight=0.1, transport_weight=1.0,
        progress=False, seed=args.seed, **checks,
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
        conv=args.conv, logdet=model.logdet_mode, checks=args.checks, params=params, epochs=args.epochs,
        batches_per_epoch=-(-len(x_train) // args.batch_size),
        epoch_wall_s=wall, epoch_cpu_s=cpu, epoch_s=statistics.median(steady(wall)),
        epoch_cpu_median_s=statistics.median(steady(cpu)),
        loss=[round(e["loss"], 4) for e in history.epochs],
        rss_gb=peak_rss_gb(), rss_before_training_gb=rss_before_training, rss_training_gb=rss_training,
        generate_s=generate_s, inverse_iterations_mean=statistics.mean(iterations), inverse_iterations_max=max(iterations),
        inverse_error=gen_error, invert_test_s=invert_test_s, test_roundtrip_error=test_error,
        threads=torch.get_num_threads(), torch=torch.__version__, setup_s=marks[0][0] - started,
    )


# ----------------------------------------------------------------------------- driver
def run_configuration(args: argparse.Namespace, conv: str, checks: bool = False) -> dict:
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
    ] + (["--checks"] if checks else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=repo)
    if done.returncode != 0:
        raise RuntimeError(f"{conv} worker failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(reference: float, ours: float) -> str:
    return f"{reference / ours:.1f}x" if ours > 0 else "-"


def report(results: dict[str, dict], reference: dict[str, dict] | None) -> str:
    """Our figures per conv; with a side-by-side ``reference``, its figures and the ratio too."""
    if reference is None:
        lines = ["| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    else:
        lines = ["| | " + " | ".join(f"{conv} reference | {conv} ours | ratio" for conv in results) + " |",
                 "|---|" + "---|---|---|" * len(results)]

    def row(name: str, ref_key: str | None, fmt, key: str, gain: bool = True) -> None:
        cells = []
        for conv, res in results.items():
            if reference is None:
                cells.append(fmt(res[key]))
                continue
            ref = reference.get(conv, {}).get(ref_key) if ref_key else None
            cells += [fmt(ref) if ref is not None else "-", fmt(res[key]),
                      ratio(ref, res[key]) if gain and ref is not None else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("flow parameters", "params", lambda v: f"{v:,}", "params", gain=False)
    row("seconds per epoch (median after the first, wall)", "epoch_s", lambda v: f"{v:.2f}", "epoch_s")
    row("CPU seconds per epoch (process)", None, lambda v: f"{v:.2f}", "epoch_cpu_median_s", gain=False)
    row("peak RSS (GB)", "rss_gb", lambda v: f"{v:.2f}", "rss_gb")
    row("generate 1000 samples (s)", "generate_s", lambda v: f"{v:.2f}", "generate_s")
    row("generation inverse error", None, lambda v: f"{v:.1e}", "inverse_error", gain=False)
    row("invert the 1320 test samples (s)", None, lambda v: f"{v:.2f}", "invert_test_s", gain=False)
    row("test round-trip error", None, lambda v: f"{v:.1e}", "test_roundtrip_error", gain=False)
    row("fixed-point iterations per block (mean)", None, lambda v: f"{v:.1f}", "inverse_iterations_mean", gain=False)
    return "\n".join(lines)


def verdicts(results: dict[str, dict], reference: dict[str, dict] | None,
             checked: dict[str, dict] | None) -> list[str]:
    """One line per target: the measured figures and whether they meet it."""
    def line(name: str, values: list[float], limit: float, suffix: str, fmt: str = ".2f", at_least: bool = False) -> str:
        met = all(value >= limit if at_least else value <= limit for value in values)
        figures = " / ".join(f"{value:{fmt}}" for value in values)
        why = "" if met else " (what limits it: docs/performance.md)"
        relation = ">=" if at_least else "<="
        return f"target {name} {relation} {limit:{fmt}}{suffix}: {figures}{suffix}, {'met' if met else 'MISSED'}{why}"

    lines = [f"targets for {' / '.join(results)}:"]
    if reference is None:
        lines.append("speed-ups: no --reference run given, so no ratio is claimed")
    else:
        common = [conv for conv in results if conv in reference]
        lines += [
            line("speed-up per epoch over the reference", [reference[c]["epoch_s"] / results[c]["epoch_s"] for c in common],
                 TARGETS["epoch_speedup"], "x", ".1f", at_least=True),
            line("speed-up of generating 1000 samples", [reference[c]["generate_s"] / results[c]["generate_s"]
                                                         for c in common], TARGETS["generate_speedup"], "x", ".1f",
                 at_least=True),
        ]
    lines += [
        line("peak RSS", [r["rss_gb"] for r in results.values()], TARGETS["rss_gb"], " GB"),
        line("inverse error", [r["inverse_error"] for r in results.values()], TARGETS["inverse_error"], "", ".0e"),
    ]
    if checked:
        # Whole runs: the last epoch's check draws 20 times more latents, once per training.
        epochs = len(next(iter(checked.values()))["epoch_wall_s"])
        lines.append(line(f"fit with its inversion checks over the bare loop, {epochs} epochs in all",
                          [sum(checked[c]["epoch_wall_s"]) / sum(results[c]["epoch_wall_s"]) for c in checked],
                          TARGETS["checks_overhead"], "x"))
    return lines


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
    parser.add_argument("--reference", help="JSON written by ../shared/refbench/ref_speed.py --json, side by side")
    parser.add_argument("--fit-checks", action="store_true",
                        help="also time fit with its default per-epoch inversion checks")
    parser.add_argument("--checks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    reference = load_reference(args.reference) if args.reference else None
    state = machine_state()
    print(f"traffic, {args.blocks} blocks of width 64, batch {args.batch_size}, {args.threads} threads, "
          f"{args.epochs} epochs, logdet={args.logdet}; {state['date']}, load average {state['load_average']:.1f}, "
          f"busy cores {'unknown' if state['busy_cores'] is None else format(state['busy_cores'], '.2f')} "
          f"of {state['cpus']}")
    if (state["busy_cores"] or 0) > 0.3:
        print("warning: the machine is not idle; wall-clock times are inflated (see the CPU-time row)")
    if reference is not None:
        ref_state = reference["machine"]
        print(f"reference from {args.reference}: {ref_state['date']}, load average "
              f"{ref_state['load_average'] if ref_state['load_average'] is not None else 'not recorded'}")
    results, checked = {}, {}
    for conv in args.convs:
        results[conv] = run_configuration(args, conv)
        res = results[conv]
        print(f"{conv}: {res['epoch_s']:.2f} s/epoch (epochs {[round(s, 2) for s in res['epoch_wall_s']]}), "
              f"peak RSS {res['rss_gb']:.2f} GB, generate {res['generate_s']:.2f} s "
              f"(error {res['inverse_error']:.1e}), logdet={res['logdet']}", flush=True)
        if args.fit_checks:
            checked[conv] = run_configuration(args, conv, checks=True)
            print(f"{conv} with fit's inversion checks: epochs {[round(t, 2) for t in checked[conv]['epoch_wall_s']]} s",
                  flush=True)
    print()
    print(report(results, None if reference is None else reference["results"]))
    print()
    for line in verdicts(results, None if reference is None else reference["results"], checked):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=state, results=results, with_checks=checked,
                                                   reference=reference), indent=2))


if __name__ == "__main__":
    main()
