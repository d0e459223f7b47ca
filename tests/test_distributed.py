"""Two-process data-parallel training equals single-process training on the same global batches."""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dgl_iflow.training import distributed
from dgl_iflow.models import IGNN
from dgl_iflow.training import TrainConfig, fit
from graphs import cycle_graph, flat_state

NUM_NODES = 5
NUM_SAMPLES = 22  # batches of 8, 8 and 6: the last one splits 3 + 3, the others 4 + 4


def problem():
    graph = cycle_graph(NUM_NODES, self_loops=True)
    generator = torch.Generator().manual_seed(0)
    y = (torch.rand(NUM_SAMPLES, NUM_NODES, generator=generator) > 0.5).long()
    x = torch.randn(NUM_SAMPLES, NUM_NODES, 2, generator=generator) + 1.5 * y.unsqueeze(-1)
    return graph, x, y


def make_model(graph, conv, logdet="exact"):
    torch.manual_seed(0)
    return IGNN(graph, feats=2, num_classes=2, conv=conv, num_blocks=2, hidden_feats=(8, 8), logdet=logdet)


def config(batch_size=8):
    return TrainConfig(epochs=2, batch_size=batch_size, lr=1e-2, weight_decay=5e-4, lr_schedule="cosine",
                       inversion_check_samples=4, progress=False, seed=3)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CASES = (("cheb", 8), ("l3", 8), ("cheb", 7))  # batch 7: 22 = 7 + 7 + 7 + 1, one process idles
ESTIMATOR_CASE = ("estimator", 7)  # shares of 4 and 3 samples draw different numbers of probes


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # rounding differences far below the tolerance
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        graph, x, y = problem()
        for conv, batch_size in CASES:
            model = make_model(graph, conv)
            history = distributed.fit(model, graph, x, y, config(batch_size))
            torch.save({"state": model.state_dict(), "history": history.epochs},
                       Path(out_dir) / f"{conv}{batch_size}-rank{rank}.pt")
        model = make_model(graph, "cheb", logdet="estimator")
        # The run's shared stream, seen inside it: fit gives the caller back its own afterwards.
        shared = []
        distributed.fit(model, graph, x, y, config(ESTIMATOR_CASE[1]),
                        callback=lambda epoch, record: shared.append(torch.get_rng_state()))
        torch.save({"state": model.state_dict(), "rng": shared},
                   Path(out_dir) / f"{ESTIMATOR_CASE[0]}{ESTIMATOR_CASE[1]}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results():
    """Every case trained by 2 gloo processes (one spawn: process start-up dominates)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(2, free_port(), out_dir), nprocs=2, join=True)
        return {
            (conv, batch_size): [torch.load(Path(out_dir) / f"{conv}{batch_size}-rank{rank}.pt") for rank in range(2)]
            for conv, batch_size in (*CASES, ESTIMATOR_CASE)
        }


@pytest.mark.parametrize("conv, batch_size", CASES)
def test_two_processes_train_like_one(two_process_results, conv, batch_size):
    results = two_process_results[(conv, batch_size)]
    torch.set_num_threads(1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        graph, x, y = problem()
        reference = make_model(graph, conv)
        history = fit(reference, graph, x, y, config(batch_size))
    finally:
        torch.set_default_dtype(previous)
    expected = flat_state(reference.state_dict())
    for result in results:  # both processes hold the single-process parameters
        state = flat_state(result["state"])
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            # LipSwish keeps its slope in float32 whatever the default dtype: its rounding (one
            # float32 ulp of the averaged gradient) reaches the float64 parameters at ~1e-10.
            tolerance = dict(rtol=1e-5, atol=1e-6) if value.dtype == torch.float32 else dict(rtol=1e-7, atol=1e-8)
            torch.testing.assert_close(state[key], value, msg=key, **tolerance)
    initial = flat_state(make_model(graph, conv).double().state_dict())
    moved = sum(float((value - initial[key]).abs().max())
                for key, value in expected.items() if value.is_floating_point())
    assert moved > 1e-3  # training did change the parameters
    # The logged terms are the global batch means.
    for mine, theirs in zip(history.epochs, results[0]["history"]):
        for key in ("loss", "nll", "ce", "transport"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-7, abs=1e-8)


def test_estimator_keeps_processes_in_step(two_process_results):
    """Probes are drawn per process from a forked stream: the shared one (batch order,
    inversion checks) stays equal across processes, and so do the parameters."""
    first, second = two_process_results[ESTIMATOR_CASE]
    assert len(first["rng"]) == len(second["rng"]) == config().epochs
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(first["rng"], second["rng"]))
    assert not torch.equal(first["rng"][0], first["rng"][1])  # the stream did advance between epochs
    first_state, second_state = flat_state(first["state"]), flat_state(second["state"])
    assert first_state.keys() == second_state.keys()
    for key, value in first_state.items():
        assert torch.equal(value, second_state[key]), key


def test_fit_outside_a_process_group_fails_clearly(monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(variable, raising=False)
    graph, x, y = problem()
    with pytest.raises((ValueError, RuntimeError, KeyError)):
        distributed.fit(make_model(graph, "cheb"), graph, x, y, config())
