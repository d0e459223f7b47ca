"""The benchmark scripts' own logic: reading a side-by-side reference run, the verdicts, and the
JKO-iFlow against iGNN comparison (its reach and factors, and a tiny end-to-end run)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_traffic_speed_claims_ratios_only_from_a_reference_run(tmp_path):
    speed = load_script("traffic_speed")
    ours = {"cheb": dict(epoch_s=2.0, epoch_wall_s=[2.5, 2.0], rss_gb=0.9, generate_s=0.4, inverse_error=1e-7, params=1, epoch_cpu_median_s=3.0,
                         invert_test_s=1.0, test_roundtrip_error=1e-7, inverse_iterations_mean=5.0)}
    without = speed.verdicts(ours, None, None)
    assert any("no ratio is claimed" in line for line in without)
    assert "reference" not in speed.report(ours, None)

    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"cheb": dict(epoch_s=9.0, rss_gb=6.5, generate_s=5.0, params=189_560)}))
    reference = speed.load_reference(str(path))
    assert reference["machine"]["load_average"] is None and reference["machine"]["date"]
    lines = speed.verdicts(ours, reference["results"], {"cheb": dict(epoch_wall_s=[2.6, 3.25])})
    epoch, generation = (next(line for line in lines if key in line) for key in ("per epoch over", "generating"))
    assert "4.5x" in epoch and "MISSED" in epoch  # 9 / 2 < 5
    assert "12.5x" in generation and "met" in generation  # 5 / 0.4 >= 10
    assert "1.30x" in next(line for line in lines if "inversion checks" in line)  # 5.85 s / 4.5 s
    assert "| 9.00 | 2.00 | 4.5x |" in speed.report(ours, reference["results"])

    path.write_text(json.dumps([1, 2]))
    with pytest.raises(SystemExit, match="ref_speed"):
        speed.load_reference(str(path))


def run(script, model, seed, curve, nll, dataset="toy"):
    return script.Run(dataset, model, seed, 10, 2, curve[-1][0], curve[-1][1], nll, 0.1, curve)


def test_jko_comparison_reads_mini_batches_to_each_target():
    script = load_script("jko_vs_discrete")
    jko = run(script, "JKO-iFlow", 0, [(10, 1.0, 5.0), (20, 2.0, 3.0), (30, 3.0, 2.0)], 2.0)
    ignn = run(script, "iGNN", 0, [(50, 1.0, 6.0), (100, 2.0, 4.0), (150, 3.0, 3.0), (200, 4.0, 3.5)], 3.0)
    assert jko.reach(jko.test_nll) == (30, 3.0) and jko.reach(ignn.test_nll) == (20, 2.0)
    assert ignn.reach(ignn.test_nll) == (150, 3.0) and ignn.reach(jko.test_nll) is None
    assert script.minibatches_to(ignn, jko) != script.minibatches_to(ignn, jko)  # nan: never reached
    table = script.summary_table([jko, ignn])
    row = table.splitlines()[-1]
    assert "| 5.0 |" in row  # the iGNN needs 150 mini-batches to its best, JKO-iFlow 30 to its own
    assert "1 of 1, at 0.13 of the iGNN's mini-batches and 0.67 of its time" in row  # 20 / 150, 2 s / 3 s
    assert row.endswith("| 0 of 1 |")
    assert "not reached" in script.runs_table([jko, ignn])


def test_jko_comparison_runs_end_to_end(tmp_path, monkeypatch):
    script = load_script("jko_vs_discrete")
    out = tmp_path / "runs.json"
    monkeypatch.setattr(sys, "argv", [
        "jko_vs_discrete.py", "--datasets", "eight_gaussians", "--seeds", "0", "--toy-samples", "200",
        "--jko-iterations", "10", "--eval-every", "5", "--ignn-epochs", "3", "--width", "8",
        "--json", str(out), "--figures", str(tmp_path / "figures")])
    script.main()
    runs = json.loads(out.read_text())
    assert [r["model"] for r in runs] == ["JKO-iFlow", "iGNN"]
    assert runs[0]["blocks"] == runs[1]["blocks"] and all(math.isfinite(r["test_nll"]) for r in runs)
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"eight_gaussians_movements.png",
                                                                 "eight_gaussians_convergence.png"}


def test_scale_runs_in_chunks_and_reports_ratios(tmp_path, capsys):
    scale = load_script("scale")
    out = tmp_path / "scale.json"
    scale.main(["--primes", "11", "13", "--batch-size", "5", "--chunk-size", "2", "--batches", "2",
                "--width", "4", "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "chunks of 2 samples" in printed and "| 13 |" in printed
    results = json.loads(out.read_text())
    assert [r["p"] for r in results] == [11, 13] and all(r["chunk_size"] == 2 for r in results)
    assert all(math.isfinite(r["loss"]) and r["batch_s"] > 0 for r in results)
