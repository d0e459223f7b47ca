"""Cost of the invertible graph layers: time and peak memory against graph size.

Run from the repository root::

    .venv/bin/python benchmarks/layers.py            # full table (a few minutes)
    .venv/bin/python benchmarks/layers.py --quick    # V = 15 and 503 only

For every graph size V in {15, 503, 10007} (a path graph with self-loops at 15, the simple
chordal cycle graph of the prime V with self-loops otherwise), D = 2 channels and B samples,
it measures for ChebConv- and L3Conv-based blocks (hidden width 32, spectral normalization
c = 0.9 so that every block is invertible):

* forward + log-det + backward of ``(|y|^2 - logdet).mean()``: median wall time over a few
  repetitions and the peak resident memory it added (``ru_maxrss`` of a fresh subprocess per
  configuration, before and after the repetitions: torch has no allocator statistics on CPU),
  in exact mode where V D <= 64 and in estimator mode everywhere;
* one fixed-point inverse (float32, tolerance 1e-5): wall time and iteration count;

then the cost ratios between sizes next to the edge-count ratios. It also times, once, the
ways to apply the graph at V = 15 on features (15, 200, 64), forward + backward: DGL
``update_all`` weighted aggregation, torch sparse COO matmul and dense matmul, and the dense
vs sparse crossover on the layers' own operators, which sets ``DENSE_MAX_NODES``.

Timings use one intra-op thread by default (``--threads``) and report CPU time (wall time
too), so that numbers from a shared, busy machine stay comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SIZES = (15, 503, 10007)
FEATS, SAMPLES, HIDDEN = 2, 200, 32
#: B at V = 10007. Extrapolated from V = 503, B = 200 would take ~11 GB there (measured later:
#: ~4 GB) and ~35 s of CPU per repetition, too much for a shared 2-core machine, so that size
#: runs with fewer samples (``--large-samples``) and the growth ratios are per sample.
LARGE_SAMPLES = 40
REPS = {15: 9, 503: 5, 10007: 3}


# --------------------------------------------------------------------------- graphs
def build_graph(num_nodes: int):
    """Path graph (15) or simple chordal cycle graph (prime sizes), both directions, self-loops."""
    import networkx as nx
    import torch

    from dgl_iflow.graphs import Graph

    if num_nodes < 100:
        simple = nx.path_graph(num_nodes)
    else:
        simple = nx.Graph(nx.chordal_cycle_graph(num_nodes))
        simple.remove_edges_from(list(nx.selfloop_edges(simple)))
    edges = torch.tensor(list(simple.edges()), dtype=torch.int64).reshape(-1, 2)
    nodes = torch.arange(num_nodes)
    src = torch.cat([edges[:, 0], edges[:, 1], nodes])
    dst = torch.cat([edges[:, 1], edges[:, 0], nodes])
    return Graph(src, dst, num_nodes)


# --------------------------------------------------------------------------- one configuration
def make_flow(kind: str, graph, mode: str, num_blocks: int = 1):
    from dgl_iflow.layers import ChebConv, L3Conv
    from dgl_iflow.transforms import GraphFlow, GraphResidual, InvertibleResBlock

    blocks = []
    for _ in range(num_blocks):
        conv = ChebConv(FEATS, HIDDEN, k=3) if kind == "cheb" else L3Conv(FEATS, HIDDEN, graph, orders=(0, 1, 2))
        residual = GraphResidual(conv, hidden_feats=(HIDDEN,), lipschitz_coeff=0.9)
        blocks.append(InvertibleResBlock(residual, logdet=mode))
    return GraphFlow(blocks)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_config(config: dict) -> dict:
    """Measured in a fresh process: the peak-memory delta belongs to this configuration only."""
    import torch

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    graph = build_graph(config["num_nodes"])
    flow = make_flow(config["kind"], graph, config["mode"], config["blocks"])
    x = torch.randn(config["num_nodes"], config["samples"], FEATS)
    with torch.no_grad():
        for block in flow.blocks:
            block.residual.layer_scales(graph)  # start the power iteration (and ChebConv's lambda_max)
        flow(graph, x[:, :1], logdet=False)  # fills the operator caches
    base = max_rss_mb()
    times, cpu_times = [], []
    for _ in range(config["reps"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        z, logdet = flow(graph, x)
        loss = (z.pow(2).sum(dim=(0, -1)) - logdet).mean()
        loss.backward()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        flow.zero_grad(set_to_none=True)
        del z, logdet, loss
    result = {"time_s": statistics.median(times), "cpu_s": statistics.median(cpu_times),
              "peak_mb": max_rss_mb() - base}
    if config["inverse"]:
        flow.eval()
        with torch.no_grad():
            z, _ = flow(graph, x, logdet=False)
            start = time.process_time()
            x_rec, _ = flow.inverse(graph, z, tol=1e-5)
            result["inverse_s"] = time.process_time() - start
            result["inverse_iterations"] = sum(block.last_inverse_iterations for block in flow.blocks)
            result["inverse_error"] = float((x_rec - x).abs().max())
    return result


def spawn(config: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- graph operators
def _median_time(fn, reps: int) -> float:
    """Median CPU time of ``fn`` (one thread: CPU time is the work, whatever the machine's load)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def operator_comparison(threads: int, quick: bool) -> None:
    import torch

    from dgl_iflow.graphs import dgl_available, to_dgl
    from dgl_iflow.layers import L3Conv
    from dgl_iflow.layers.graph_operator import DENSE_MAX_NODES, SparsePattern, node_matmul

    torch.set_num_threads(threads)
    print("\nApplying the graph at V = 15, features (15, 200, 64), forward + backward, median of 30:")
    graph = build_graph(15)
    dgl_graph = to_dgl(graph) if dgl_available() else None
    src, dst = graph.edges()
    weight = torch.rand(graph.num_edges())
    feat = torch.randn(15, 200, 64, requires_grad=True)
    dense = torch.zeros(15, 15).index_put((dst, src), weight, accumulate=True)
    sparse = torch.sparse_coo_tensor(torch.stack([dst, src]), weight, (15, 15)).coalesce()

    def with_dgl():
        import dgl.function as dglfn

        with dgl_graph.local_scope():
            dgl_graph.ndata["h"] = feat
            dgl_graph.edata["w"] = weight.reshape(-1, 1, 1)
            dgl_graph.update_all(dglfn.u_mul_e("h", "w", "m"), dglfn.sum("m", "h"))
            dgl_graph.ndata["h"].sum().backward()

    def with_sparse():
        torch.sparse.mm(sparse, feat.reshape(15, -1)).sum().backward()

    def with_dense():
        (dense @ feat.reshape(15, -1)).sum().backward()

    contenders = [("DGL update_all", with_dgl)] if dgl_graph is not None else []
    contenders += [("torch sparse COO", with_sparse), ("torch dense", with_dense)]
    timings = {name: _median_time(fn, 30) for name, fn in contenders}
    fastest = min(timings.values())
    for name, seconds in timings.items():
        print(f"  {name:<18} {seconds * 1e3:8.3f} ms   x{seconds / fastest:5.1f}")

    print(f"\nDense vs sparse operators on features (V, 200, 2), forward + backward, as the layers apply them "
          f"(DENSE_MAX_NODES = {DENSE_MAX_NODES}):")
    print("  Laplacian: fixed values (ChebConv); L3: 3 stacked bases of orders (0, 1, 2) with learnable values")
    print(f"  {'V':>5} {'E':>6} | {'Laplacian dense':>15} {'sparse':>9} | {'L3 dense':>11} {'sparse':>9}")
    crossover = {}
    for num_nodes in (17, 31, 47, 61, 89, 127, 257) + (() if quick else (509,)):
        graph = build_graph(num_nodes)
        src, dst = graph.edges()
        l3 = L3Conv(2, 2, graph, orders=(0, 1, 2))
        feat = torch.randn(num_nodes, 200, 2, requires_grad=True)
        row = {}
        for name, (r, c, v, shape) in {
            "lap": (dst, src, torch.rand(graph.num_edges()), (num_nodes, num_nodes)),
            "l3": (l3.pair_index[0], l3.pair_index[1], l3.filter_values, (3 * num_nodes, num_nodes)),
        }.items():
            def dense_step():
                matrix = torch.zeros(shape).index_put((r, c), v, accumulate=True)
                node_matmul(matrix, feat).sum().backward()

            # The layers sort their pairs once (per graph, or per L3Conv), not at every step.
            pattern, slots = SparsePattern.from_pairs(r, c, shape)

            def sparse_step():
                matrix = pattern.with_values(v.new_zeros(pattern.nnz).index_add(0, slots, v))
                node_matmul(matrix, feat).sum().backward()

            reps = 20 if num_nodes < 300 else 5
            row[name] = (_median_time(dense_step, reps), _median_time(sparse_step, reps))
            if row[name][1] < row[name][0] and name not in crossover:
                crossover[name] = num_nodes
        print(f"  {num_nodes:>5} {graph.num_edges():>6} | {row['lap'][0] * 1e3:12.3f} ms {row['lap'][1] * 1e3:6.3f} ms"
              f" | {row['l3'][0] * 1e3:8.3f} ms {row['l3'][1] * 1e3:6.3f} ms", flush=True)
    print("  sparse first faster at V =", {k: crossover.get(k, "never") for k in ("lap", "l3")})


# --------------------------------------------------------------------------- table
def _row(label: str, num_nodes: int, num_edges: int, samples: int, result: dict) -> str:
    if "error" in result:
        return f"{num_nodes:>6} {num_edges:>6} {samples:>4} {label:<24} failed: {result['error']}"
    inverse = f"{result['inverse_s'] * 1e3:8.1f}ms" if "inverse_s" in result else ""
    iters = str(result.get("inverse_iterations", ""))
    return (f"{num_nodes:>6} {num_edges:>6} {samples:>4} {label:<24} {result['cpu_s'] * 1e3:8.1f}ms "
            f"{result['time_s'] * 1e3:8.1f}ms {result['peak_mb']:8.1f}MB {inverse:>10} {iters:>5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="V = 15 and 503 only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=SAMPLES, help="B for V = 15 and 503")
    parser.add_argument("--large-samples", type=int, default=LARGE_SAMPLES, help="B for V = 10007")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_config(json.loads(args.child))))
        return

    sizes = SIZES[:2] if args.quick else SIZES
    samples = {v: args.large_samples if v > 5000 else args.samples for v in sizes}
    edges = {v: build_graph(v).num_edges() for v in sizes}
    print(f"One invertible block, D = {FEATS}, hidden width {HIDDEN}, c = 0.9, float32, {args.threads} thread(s).")
    print("cpu / wall: median CPU and wall time of forward + log-det + backward; memory: peak RSS it "
          "added; inverse: CPU time of the fixed point to tol 1e-5")
    header = (f"{'V':>6} {'E':>6} {'B':>4} {'conv / log-det':<24} {'cpu':>10} {'wall':>10} {'memory':>10} "
              f"{'inverse':>10} {'iters':>5}")
    print(header)
    print("-" * len(header))
    results = {}
    for num_nodes in sizes:
        for kind in ("cheb", "l3"):
            modes = (["exact"] if num_nodes * FEATS <= 64 else []) + ["estimator"]
            for mode in modes:
                config = dict(num_nodes=num_nodes, kind=kind, mode=mode, blocks=1,
                              samples=samples[num_nodes], reps=REPS[num_nodes], threads=args.threads,
                              inverse=mode == "estimator")
                results[(num_nodes, kind, mode)] = result = spawn(config)
                print(_row(f"{kind} {mode}", num_nodes, edges[num_nodes], samples[num_nodes], result), flush=True)

    print("\nGrowth of the estimator path per sample between sizes (CPU time, peak memory), "
          "against the edge count:")
    for small, large in zip(sizes[:-1], sizes[1:]):
        for kind in ("cheb", "l3"):
            a, b = results.get((small, kind, "estimator"), {}), results.get((large, kind, "estimator"), {})
            if "time_s" not in a or "time_s" not in b:
                continue
            per = samples[small] / samples[large]
            memory = f"{b['peak_mb'] / a['peak_mb'] * per:6.1f}" if a["peak_mb"] > 1 else "   n/a"
            print(f"  {small:>5} -> {large:<5} {kind:<5} cpu x{b['cpu_s'] / a['cpu_s'] * per:6.1f}   "
                  f"memory x{memory}   edges x{edges[large] / edges[small]:5.1f}")

    if not args.quick:
        # Same V * B as at V = 503: separates the growth in V from the slowdown of elementwise
        # ops on tensors that no longer fit in cache.
        small, large = 503, 10007
        same = args.samples * small // large
        print(f"\nV = {large} with B = {same}, so that V B matches V = {small}, B = {args.samples} "
              "(per node-sample cost, same tensor sizes):")
        for kind in ("cheb", "l3"):
            config = dict(num_nodes=large, kind=kind, mode="estimator", blocks=1,
                          samples=same, reps=REPS[large], threads=args.threads, inverse=False)
            result = spawn(config)
            print(_row(f"{kind} estimator", large, edges[large], same, result), flush=True)
            base = results.get((small, kind, "estimator"), {})
            if "cpu_s" in result and "cpu_s" in base:
                per = args.samples / same
                print(f"  {small:>5} -> {large:<5} {kind:<5} cpu per sample x{result['cpu_s'] / base['cpu_s'] * per:6.1f}"
                      f"   memory per sample x{result['peak_mb'] / base['peak_mb'] * per:6.1f}"
                      f"   edges x{edges[large] / edges[small]:5.1f}")

    num_nodes = 503
    print(f"\nFlow of 4 blocks at V = {num_nodes}, B = {args.samples}, estimator")
    config = dict(num_nodes=num_nodes, kind="cheb", mode="estimator", blocks=4, samples=args.samples, reps=3,
                  threads=args.threads, inverse=False)
    print(_row("cheb x4", num_nodes, edges.get(num_nodes, 0) or build_graph(num_nodes).num_edges(),
               args.samples, spawn(config)), flush=True)
    operator_comparison(args.threads, args.quick)


if __name__ == "__main__":
    main()
