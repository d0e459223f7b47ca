"""Tests of block-wise JKO training, the time grid and the JKOFlow model interface."""

import contextlib
import inspect
import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dgl_iflow.models import IGNN, JKOFlow
from dgl_iflow.training import (JKOConfig, JKOTrainer, SavedTensorMeter, fit_jko, refine, reparametrize,
                                reparametrized_steps, step_size)
from graphs import line_graph, single_node_graph


def _shifted_gaussian(n: int = 600, seed: int = 0) -> torch.Tensor:
    """A 2-D toy far from N(0, I), ``(n, 1, 2)`` on one node: the JKO flow has to carry it a long
    way, so blocks move a lot."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.tensor([4.0, 0.0]) + 0.5 * torch.randn(n, 2, generator=generator)).unsqueeze(1)


def _randomize(model: JKOFlow, seed: int = 0, scale: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def _quick(**overrides) -> JKOConfig:
    return JKOConfig(**{**dict(iterations=3, batch_size=32, max_blocks=2, tol=0.0, progress=False), **overrides})


@pytest.fixture(scope="module")
def trained():
    """Five blocks grown on the shifted Gaussian, then one round of re-spacing and retraining."""
    x = _shifted_gaussian()
    model = JKOFlow(single_node_graph(), 2, conv="node", hidden_feats=(16, 16), steps=2)
    # Short steps: re-spacing assumes a block moves about h times its speed, which fails for
    # blocks that reach the target early (they barely move, whatever their h).
    config = JKOConfig(h0=0.25, iterations=30, batch_size=128, max_blocks=5, tol=0.0, reparametrize_rounds=1,
                       eta=1.0, progress=False)
    history = fit_jko(model, single_node_graph(), x, None, config)
    return model, history, x


# -- time grid ----------------------------------------------------------------


def test_step_sizes_grow_geometrically_up_to_h_max():
    assert [step_size(k, 0.5, 2.0, 3.0) for k in range(4)] == [0.5, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        step_size(0, 0.0, 1.2, 1.0)


def test_reparametrized_steps_equalize_movement_at_constant_speed():
    steps = [0.1, 0.3, 0.6]
    movements = [2.0 * h for h in steps]  # a block moving at speed 2 moves 2 h
    full = reparametrized_steps(steps, movements, eta=1.0)
    mean = sum(movements) / 3
    assert full == pytest.approx([mean / 2.0] * 3)  # now every block moves the mean movement
    half = reparametrized_steps(steps, movements, eta=0.5)
    assert half == pytest.approx([(h + mean / 2.0) / 2 for h in steps])
    with pytest.raises(ValueError, match="positive"):
        reparametrized_steps(steps, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="eta"):
        reparametrized_steps(steps, movements, eta=0.0)


def test_reparametrize_keeps_the_model_and_refine_doubles_blocks():
    graph = line_graph(4)
    # Retiming keeps RK4's iterates exactly; an adaptive solver would choose other steps.
    model = JKOFlow(graph, 2, conv="cheb", hidden_feats=(8, 8), steps=6, solver="rk4").double()
    for t0, t1 in [(0.0, 0.3), (0.3, 0.8), (0.8, 1.5)]:
        model.blocks.append(model.new_block(t0, t1))
    assert model.blocks is model.flow.blocks and len(model.flow.blocks) == 3
    _randomize(model)
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    with torch.no_grad():
        z, logdet, _ = model.encode(graph, x)
        assert z.shape == (5, 4, 2) and logdet.shape == (5,)
        steps = reparametrize(model, movements=[1.0, 2.0, 4.0], eta=1.0)
        assert model.step_sizes == pytest.approx(steps)
        assert steps == pytest.approx([0.3 * 7 / 3, 0.5 * 7 / 6, 0.7 * 7 / 12])
        moved, moved_logdet, _ = model.encode(graph, x)
        torch.testing.assert_close(moved, z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(moved_logdet, logdet, rtol=1e-12, atol=1e-12)
        grid = model.time_grid
        refine(model)
        assert len(model.blocks) == 6
        assert model.time_grid[::2] == pytest.approx(grid)
        refined, refined_logdet, _ = model.encode(graph, x)
    torch.testing.assert_close(refined, z, rtol=0, atol=1e-4)  # same fields, finer RK4
    torch.testing.assert_close(refined_logdet, logdet, rtol=0, atol=1e-4)


# -- training -----------------------------------------------------------------


def test_training_moves_the_data_to_the_target_and_history_matches_log_prob(trained):
    model, history, x = trained
    assert history.stages() == ["grow", "reparametrize 1"]
    assert [r.block for r in history.stage("grow")] == list(range(5))
    with torch.no_grad():
        log_prob = model.log_prob(single_node_graph(), x)
        identity_nll = float(model.potential(x).mean())  # the model before training
    assert log_prob.shape == (len(x),)
    # The cached pushes give the same likelihood as running the whole model.
    assert history.train_nll() == pytest.approx(float(-log_prob.mean()), abs=1e-3)
    assert history.train_nll() < identity_nll - 4.0
    # The true NLL of N((4, 0), 0.25 I) is 2 (1 + log(2 pi 0.25)) / 2 = 0.545.
    assert history.train_nll() < 2.5
    assert all(r.round_trip < 1e-3 for r in history.records)
    assert history.minibatches == 10 * 30
    assert max(model.round_trip_error(single_node_graph(), x[:50])) < 1e-3


def test_reparametrization_evens_out_block_movement(trained):
    _, history, _ = trained
    before, after = history.movements("grow"), history.movements("reparametrize 1")
    # Retraining alone, without re-spacing, gives 0.95 of the spread here; re-spacing 0.68.
    assert max(after) / min(after) < 0.85 * max(before) / min(before), (before, after)
    grown = [r.t1 - r.t0 for r in history.stage("grow")]
    defaults = JKOConfig()
    assert grown == pytest.approx([step_size(k, 0.25, defaults.rho, defaults.h_max) for k in range(5)])
    # The last block moved least, so re-spacing lengthened it.
    assert history.stage("reparametrize 1")[-1].t1 - history.stage("reparametrize 1")[-1].t0 > grown[-1]


def test_saved_memory_per_step_does_not_grow_with_the_block_index(trained):
    model, history, x = trained
    saved = [r.saved_bytes for r in history.stage("grow")]
    assert saved[0] > 0 and max(saved) <= 1.05 * saved[0], saved
    # Negative control: the same meter on an end-to-end step through k blocks grows with k.
    flow_graph, batch = model.to_flow(single_node_graph(), x[:128])  # the blocks' node-first layout
    end_to_end = []
    for k in (1, 3, 5):
        with SavedTensorMeter() as meter:
            z, logdet = batch, 0.0
            for block in model.blocks[:k]:
                z, block_logdet = block(flow_graph, z)
                logdet = logdet + block_logdet
            (model.potential(model.from_flow(z)) - logdet).mean()
        end_to_end.append(meter.bytes)
    assert end_to_end[2] > 4 * end_to_end[0], end_to_end


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from dgl_iflow.models import JKOFlow
    from dgl_iflow.training import JKOConfig, fit_jko
    torch.set_num_threads(1)
    num_samples, width, num_blocks = 1024, 64, 4
    from dgl_iflow.graphs import Graph
    graph = Graph([0], [0], num_nodes=1)
    x = torch.randn(num_samples, 1, 2, generator=torch.Generator().manual_seed(0)) + 3.0
    model = JKOFlow(graph, 2, conv="node", hidden_feats=(width, width))
    def peak():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    # The imports' own high-water mark (higher on a fresh venv, which compiles bytecode) would
    # hide everything after it: reset it (Linux) before measuring.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    peaks = []
    config = JKOConfig(iterations=1, batch_size=num_samples, max_blocks=num_blocks, tol=0.0, check_samples=8,
                       progress=False)
    history = fit_jko(model, graph, x, None, config, callback=lambda record: peaks.append(peak()))
    # Negative control: one step through every block at once, as end-to-end training would take.
    z, logdet, _ = model.encode(graph, x)
    (model.potential(z) - logdet).mean().backward()
    print(json.dumps(dict(peaks=peaks, saved=history.records[0].saved_bytes, end_to_end=peak())))
""")


def test_peak_resident_memory_does_not_grow_with_the_block_index():
    env = dict(os.environ, OMP_NUM_THREADS="1",
               # Every large buffer gets its own mapping, returned to the OS when freed, so the
               # peak resident size follows the live tensors rather than the heap's history.
               MALLOC_MMAP_THRESHOLD_="65536")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    peaks, saved = report["peaks"], report["saved"]
    assert saved > 10e6  # the step is large enough to see in the resident size
    assert max(peaks) - peaks[0] < 0.25 * saved, (peaks, saved)
    assert report["end_to_end"] - max(peaks) > 1.5 * saved, report  # the measurement can see growth


def test_first_pass_stops_once_blocks_stop_moving():
    x = _shifted_gaussian(200)
    model = JKOFlow(single_node_graph(), 2, conv="node", hidden_feats=(8, 8))
    history = fit_jko(model, single_node_graph(), x, None, _quick(max_blocks=4, tol=10.0))
    assert len(model.blocks) == 1 and len(history.records) == 1
    fit_jko(model := JKOFlow(single_node_graph(), 2, conv="node", hidden_feats=(8, 8)), single_node_graph(), x, None,
            _quick(max_blocks=4, min_blocks=3, tol=10.0))
    assert len(model.blocks) == 3


def test_seed_makes_training_reproducible():
    x = _shifted_gaussian(200)

    def train(seed: int) -> dict:
        model = JKOFlow(single_node_graph(), 2, conv="node", hidden_feats=(8, 8), divergence="hutchinson")
        fit_jko(model, single_node_graph(), x, None, _quick(seed=seed))
        return model.state_dict()

    torch.manual_seed(123)
    first = train(0)
    torch.manual_seed(456)  # the caller's random state does not matter, the seed does
    second, other = train(0), train(1)
    tensors = [key for key, value in first.items() if isinstance(value, torch.Tensor)]
    assert all(torch.equal(first[key], second[key]) for key in tensors)
    assert not all(torch.equal(first[key], other[key]) for key in tensors)


def test_caller_random_state_is_restored():
    x = _shifted_gaussian(100)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fit_jko(JKOFlow(single_node_graph(), 2, conv="node", hidden_feats=(8, 8)), single_node_graph(), x, None,
            _quick(max_blocks=1))
    torch.testing.assert_close(torch.rand(3), expected)


class Interrupted(Exception):
    pass


def _random_states() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_fit_jko_leaves_the_callers_python_numpy_and_torch_states_alone(fails):
    x = _shifted_gaussian(100)
    model = JKOFlow(single_node_graph(), 2, conv="node", hidden_feats=(8, 8), divergence="hutchinson")
    random.seed(21), np.random.seed(22), torch.manual_seed(23)
    np.random.standard_normal()  # NumPy caches a Gaussian: part of its state too
    before = _random_states()
    inside = []

    def record(_record) -> None:
        inside.append(_random_states())
        if fails:
            raise Interrupted

    with pytest.raises(Interrupted) if fails else contextlib.nullcontext():
        fit_jko(model, single_node_graph(), x, None, _quick(seed=4), callback=record)
    after = _random_states()
    assert after[0] == before[0]
    assert after[1][0] == before[1][0] and np.array_equal(after[1][1], before[1][1]) and after[1][2:] == before[1][2:]
    assert torch.equal(after[2], before[2])
    # Negative control: inside the run the streams were the config's seed, not the caller's.
    random.seed(4), np.random.seed(4)
    assert inside[0][0] == random.getstate() != before[0]
    assert np.array_equal(inside[0][1][1], np.random.get_state()[1])
    assert not torch.equal(inside[0][2], before[2])


def test_refine_rounds_double_the_blocks_and_retrain():
    x = _shifted_gaussian(200)
    model = JKOFlow(single_node_graph(), 2, conv="node", hidden_feats=(8, 8))
    history = fit_jko(model, single_node_graph(), x, None, _quick(refine_rounds=1, retrain_iterations=2))
    assert len(model.blocks) == 4
    assert history.stages() == ["grow", "refine 1"]
    assert [r.minibatches for r in history.records] == [3, 3, 2, 2, 2, 2]


# -- the model interface --------------------------------------------------------


def test_conditional_model_has_the_interface_of_ignn():
    graph = line_graph(4)
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (60, 4), generator=generator)
    x = torch.randn(60, 4, 2, generator=generator) + y.unsqueeze(-1).float()
    model = JKOFlow(graph, 2, 3, conv="l3", hidden_feats=(8, 8))
    fit_jko(model, graph, x, y, _quick())
    batch_x, batch_y = x[:7], y[:7]
    assert model.log_prob(graph, batch_x, batch_y).shape == (7,)
    proba = model.predict_proba(graph, batch_x)
    assert proba.shape == (7, 4, 3)
    torch.testing.assert_close(proba.sum(-1), torch.ones(7, 4))
    assert model.sample(graph, torch.tensor([0, 1, 2, 0]), 5).shape == (5, 4, 2)
    assert model.uncertainty_set(graph, torch.tensor([0, 1, 2, 0]), num_points=6).shape == (6, 4, 2)
    assert model.in_uncertainty_set(graph, batch_x, batch_y).shape == (7,)
    assert model.in_node_uncertainty_sets(graph, batch_x, batch_y).shape == (7, 4)
    for name in ("log_prob", "sample", "predict_proba", "generate", "encode", "uncertainty_set",
                 "in_uncertainty_set", "round_trip_error", "save", "load", "load_weights", "checkpoint",
                 "from_checkpoint", "to_flow", "from_flow"):
        ours = list(inspect.signature(getattr(JKOFlow, name)).parameters)
        theirs = list(inspect.signature(getattr(IGNN, name)).parameters)
        assert ours[:3] == theirs[:3], name
    assert model.latent is not None and model.num_classes == 3


def test_unconditional_model_samples_from_a_standard_normal_latent():
    graph = line_graph(3)
    model = JKOFlow(graph, 2, conv="cheb", hidden_feats=(8, 8)).double()
    assert model.dtype == torch.float64 and model.device == torch.device("cpu")
    samples = model.sample(graph, n=4)
    assert samples.shape == (4, 3, 2) and samples.dtype == torch.float64
    torch.testing.assert_close(model.log_prob(graph, torch.zeros(1, 3, 2, dtype=torch.float64)),
                               torch.tensor([-3 * torch.log(torch.tensor(2 * torch.pi)).item()], dtype=torch.float64))
    with pytest.raises(ValueError, match="without labels"):
        model.sample(graph, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="refused by an unconditional"):
        model.log_prob(graph, torch.zeros(1, 3, 2, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no labels"):
        model.predict_proba(graph, torch.zeros(1, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="labels are needed by a conditional JKOFlow"):
        fit_jko(JKOFlow(graph, 2, 2, conv="cheb"), graph, torch.zeros(5, 3, 2), None, _quick())
    with pytest.raises(ValueError, match="refused by an unconditional"):
        fit_jko(JKOFlow(graph, 2, conv="cheb"), graph, torch.zeros(5, 3, 2), torch.zeros(5, 3, dtype=torch.long),
                _quick())
    with pytest.raises(ValueError, match=r"x_train must have shape \(N, V, d\) = \(N, 3, 2\), got \(3, 5, 2\)"):
        fit_jko(JKOFlow(graph, 2, conv="cheb"), graph, torch.zeros(3, 5, 2), None, _quick())  # node-first
    with pytest.raises(ValueError, match="graph of 3 nodes"):
        fit_jko(JKOFlow(graph, 2, conv="cheb"), line_graph(4), torch.zeros(5, 3, 2), None, _quick())


def test_mlp_layout_and_checkpoint_round_trip():
    graph = line_graph(3)
    model = JKOFlow(graph, 2, conv="mlp", hidden_feats=(8, 8))
    model.blocks.append(model.new_block(0.0, 0.4))
    model.blocks.append(model.new_block(0.4, 1.0))
    _randomize(model)
    x = torch.randn(5, 3, 2)
    flow_graph, z = model.to_flow(graph, x)
    assert z.shape == (1, 5, 6) and flow_graph.num_nodes() == 1  # every sample one vector on one node
    torch.testing.assert_close(z[0, 2], x[2].reshape(-1), rtol=0, atol=0)  # node-major
    torch.testing.assert_close(model.from_flow(z), x, rtol=0, atol=0)
    restored = JKOFlow.from_checkpoint(model.checkpoint())
    assert restored.time_grid == model.time_grid
    torch.testing.assert_close(restored.log_prob(graph, x), model.log_prob(graph, x))


def test_graph_layout_conversion_is_node_first():
    graph = line_graph(4)
    model = JKOFlow(graph, 2, conv="l3", hidden_feats=(8, 8))
    x = torch.randn(5, 4, 2)
    flow_graph, z = model.to_flow(graph, x)
    assert flow_graph is graph and z.shape == (4, 5, 2)
    torch.testing.assert_close(z[1, 3], x[3, 1], rtol=0, atol=0)
    torch.testing.assert_close(model.from_flow(z), x, rtol=0, atol=0)
    # Without blocks the flow is the identity.
    h, logdet, transport = model.encode(graph, x)
    torch.testing.assert_close(h, x, rtol=0, atol=0)
    assert torch.count_nonzero(logdet) == 0 and torch.count_nonzero(transport) == 0


def test_save_load_and_load_weights_rebuild_the_blocks(tmp_path):
    graph = line_graph(4)
    generator = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (6, 4), generator=generator)
    x = torch.randn(6, 4, 2, generator=generator)
    model = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8)).double()
    for t0, t1 in [(0.0, 0.3), (0.3, 0.9)]:
        model.blocks.append(model.new_block(t0, t1))
    assert all(p.dtype == torch.float64 for p in model.parameters())  # new blocks follow the model's dtype
    _randomize(model)
    path = tmp_path / "jko.pt"
    model.save(path, note="extra entries travel along")
    assert model.checkpoint()["structure"] == dict(intervals=[(0.0, 0.3), (0.3, 0.9)], solver=model.solver,
                                                   divergence=model.divergence)
    x = x.double()
    expected = model.log_prob(graph, x, y)
    loaded = JKOFlow.load(path)
    assert loaded.dtype == torch.float64  # as saved, not rounded through the default dtype
    assert loaded.time_grid == model.time_grid and loaded.config == model.config
    torch.testing.assert_close(loaded.log_prob(graph, x, y), expected, rtol=0, atol=0)
    fresh = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8)).double()
    assert len(fresh.blocks) == 0
    checkpoint = fresh.load_weights(path)
    assert checkpoint["note"] == "extra entries travel along"
    assert fresh.time_grid == model.time_grid
    torch.testing.assert_close(fresh.log_prob(graph, x, y), expected, rtol=0, atol=0)
    # Loading replaces blocks a model already has.
    fresh.blocks.append(fresh.new_block(0.9, 2.0))
    fresh.load_weights(path)
    assert len(fresh.blocks) == 2
    with pytest.raises(ValueError, match=r"another configuration.*hidden_feats"):
        JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(4, 4)).load_weights(path)


def test_trainer_takes_the_graph_second():
    graph = line_graph(4)
    x = torch.randn(40, 4, 2, generator=torch.Generator().manual_seed(2))
    records = []
    model = JKOFlow(graph, 2, conv="l3", hidden_feats=(8, 8))
    trainer = JKOTrainer(model, graph, x, None, _quick(), records.append)
    history = trainer.fit()
    assert history is trainer.history and len(records) == len(history.records) == len(model.blocks) == 2
    reference = JKOFlow(graph, 2, conv="l3", hidden_feats=(8, 8))
    fit_jko(reference, graph, x, None, _quick())
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)
