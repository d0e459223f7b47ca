"""How the estimator log-det path scales with the graph: chordal cycle graphs of ~500 to ~100k nodes.

One command::

    .venv/bin/python benchmarks/scale.py                 # p = 503, 10007, 100003 on the CPU
    .venv/bin/python benchmarks/scale.py --chunk-size 4  # each batch in chunks of 4 samples
    .venv/bin/python benchmarks/scale.py --device cuda   # the same on a GPU

For each prime p the graph is ``networkx.chordal_cycle_graph(p)`` (node x joined to x - 1, x + 1 and
x^-1 mod p), built directly with numpy (networkx takes ~20 s at p = 100003; the result is checked
against networkx for the smallest p), without multi-edges and non-self loops plus one self-loop
per node, as in ``load_dataset("chordal")`` (whose dense mixing operator cannot be built at 1e5
nodes). A flow of invertible blocks with ``logdet="estimator"`` (Hutchinson probe, power series
with a fixed number of terms so that every batch does the same work) runs one training step per
batch of 32 samples with d = 2 features per node: forward, log-det estimate, backward, Adam;
with ``--chunk-size`` the forward and backward run in chunks whose gradients add up to the batch's
(``TrainConfig.chunk_size``).
Each p runs in a fresh subprocess; printed are the median seconds per batch and the peak memory
(process RSS on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU), with their ratios next to
the ratio of edge counts: linear scaling means the columns agree.
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
PRIMES = (503, 10007, 100003)


def chordal_pairs(p: int):
    """Distinct undirected non-loop edges ``(u, v)``, ``u < v``, of ``chordal_cycle_graph(p)``."""
    import numpy as np

    nodes = np.arange(p, dtype=np.int64)
    inverse = np.array([pow(int(x), p - 2, p) if x else 0 for x in nodes], dtype=np.int64)
    u = np.concatenate([nodes, nodes])
    v = np.concatenate([(nodes + 1) % p, inverse])
    keep = u != v
    pairs = np.unique(np.sort(np.stack([u[keep], v[keep]], 1), axis=1), axis=0)
    return pairs


#: How the graph reaches the flow: the data sets' own form (a DGLGraph where DGL imports), or
#: converted to one form of ``dgl_iflow.graphs``.
GRAPH_FORMS = ("native", "dgl", "pyg", "edge_index", "graph")


def build_graph(p: int, form: str = "native"):
    from dgl_iflow.data.base import undirected_graph
    from dgl_iflow.graphs import as_graph, to_dgl, to_pyg

    pairs = chordal_pairs(p)
    native = undirected_graph([tuple(row) for row in pairs.tolist()], p, self_loops=True)
    graph = as_graph(native)
    return {"native": lambda: native, "dgl": lambda: to_dgl(graph), "pyg": lambda: to_pyg(graph),
            "edge_index": lambda: (graph.edge_index, graph.num_nodes()), "graph": lambda: graph}[form]()


def peak_memory_gb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024 ** 3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from dgl_iflow.graphs import as_graph
    from dgl_iflow.layers import ChebConv, L3Conv
    from dgl_iflow.training.common import backward_in_chunks
    from dgl_iflow.transforms import GraphFlow, GraphResidual, InvertibleResBlock

    device = torch.device(args.device)
    started = time.perf_counter()
    graph = build_graph(args.p, args.graph_form)
    build_s = time.perf_counter() - started
    nodes, edges = as_graph(graph).num_nodes(), as_graph(graph).num_edges()
    if args.check_networkx:
        from dgl_iflow.data.synthetic import chordal_cycle_pairs

        assert [tuple(r) for r in chordal_pairs(args.p).tolist()] == chordal_cycle_pairs(args.p), "graph differs from networkx"
    torch.manual_seed(0)

    def make_conv():
        if args.conv == "l3":
            return L3Conv(2, args.width, graph, orders=(0, 1))
        return ChebConv(2, args.width, k=3)

    blocks = [
        InvertibleResBlock(
            GraphResidual(make_conv(), hidden_feats=(args.width,) if args.hidden else ()),
            logdet="estimator", n_exact_terms=args.terms, stop_probability=1.0, n_probes=1,
        )
        for _ in range(args.blocks)
    ]
    flow = GraphFlow(blocks).to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def batch_loss(x: torch.Tensor) -> dict[str, torch.Tensor]:
        z, logdet, transport = flow.forward_with_transport(graph, x)
        return dict(loss=(0.5 * z.pow(2).sum(dim=(0, -1)) - logdet + transport).mean())

    x_all = torch.randn(nodes, args.batches * args.batch_size, 2, device=device)
    times, cpu_times = [], []
    for batch in range(args.batches):
        x = x_all[:, batch * args.batch_size:(batch + 1) * args.batch_size]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        terms = backward_in_chunks(lambda chunk: batch_loss(x[:, chunk]), torch.arange(x.shape[1]), args.chunk_size)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return dict(
        p=args.p, nodes=nodes, edges=edges, graph_form=args.graph_form, batch_s=statistics.median(times[1:] or times),
        batch_times=times, batch_cpu_s=statistics.median(cpu_times[1:] or cpu_times), peak_gb=peak_memory_gb(device), graph_build_s=build_s, device=str(device),
        params=sum(p.numel() for p in flow.parameters()), loss=terms["loss"], chunk_size=args.chunk_size,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--primes", type=int, nargs="+", default=list(PRIMES))
    parser.add_argument("--conv", default="l3", choices=["l3", "cheb"])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--width", type=int, default=16, help="graph-conv output width (and hidden width)")
    parser.add_argument("--hidden", action="store_true", help="add one node-wise hidden layer")
    parser.add_argument("--terms", type=int, default=2, help="power-series terms of the estimator")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="samples per forward and backward pass, gradients accumulated over the batch "
                             "(TrainConfig.chunk_size; default: the whole batch at once)")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--graph-form", default="native", choices=GRAPH_FORMS,
                        help="the form the graph is given in: native (the data sets', a DGLGraph where DGL "
                             "imports), or converted to a DGLGraph, a PyG Data, (edge_index, V) or a Graph")
    parser.add_argument("--json")
    parser.add_argument("--p", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--check-networkx", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    print(f"estimator log-det, {args.blocks} {args.conv} blocks of width {args.width}, batch {args.batch_size}, "
          f"d = 2, {args.terms} series terms, chunks of {args.chunk_size or args.batch_size} samples, "
          f"device {args.device}, {args.threads} threads, graph as {args.graph_form}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = []
    for index, p in enumerate(args.primes):
        command = [sys.executable, __file__, "--worker", "--p", str(p), "--conv", args.conv, "--blocks", str(args.blocks),
                   "--width", str(args.width), "--terms", str(args.terms), "--batch-size", str(args.batch_size),
                   "--batches", str(args.batches), "--threads", str(args.threads), "--device", args.device,
                   "--graph-form", args.graph_form]
        command += ["--chunk-size", str(args.chunk_size)] * (args.chunk_size is not None)
        command += ["--hidden"] * args.hidden
        command += ["--check-networkx"] * (index == 0)
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(REPO))
        if done.returncode != 0:
            raise RuntimeError(f"p = {p} failed:\n{done.stdout}\n{done.stderr}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"p = {p}: {r['edges']} edges, {r['batch_s']:.3f} s/batch, peak {r['peak_gb']:.2f} GB "
              f"(graph built in {r['graph_build_s']:.1f} s)", flush=True)
    first = results[0]
    print("\n| p (nodes) | edges | s / batch | CPU s / batch | peak memory (GB) | edge ratio | time ratio | CPU-time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['p']:,} | {r['edges']:,} | {r['batch_s']:.3f} | {r['batch_cpu_s']:.3f} | {r['peak_gb']:.2f} | "
              f"{r['edges'] / first['edges']:.1f} | {r['batch_s'] / first['batch_s']:.1f} | "
              f"{r['batch_cpu_s'] / first['batch_cpu_s']:.1f} | {r['peak_gb'] / first['peak_gb']:.1f} |")
    if args.device == "cpu":
        print("(CPU peak memory is the process RSS, ~0.5 GB of it torch and dgl themselves where DGL is installed)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
