"""Early stopping of JKO-iFlow on validation data: blocks keep their best weights, growth stops
at the first block that does not lower the validation NLL."""
import pytest
import torch

from dgl_iflow import JKOConfig, JKOFlow
from dgl_iflow.training import JKOTrainer
from graphs import make_graph


def problem(n, seed):
    generator = torch.Generator().manual_seed(seed)
    graph = make_graph(([0, 1, 1, 2], [1, 0, 2, 1]))
    y = torch.randint(0, 2, (n, 3), generator=generator)
    x = 2.0 * y.unsqueeze(-1).float() - 1.0 + 0.5 * torch.randn(n, 3, 2, generator=generator)
    return graph, x, y


def trainer(**changes) -> tuple[JKOTrainer, JKOFlow, tuple]:
    graph, x, y = problem(96, seed=0)
    x_val, y_val = problem(32, seed=1)[1:]
    torch.manual_seed(1)
    flow = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8))
    options = dict(max_blocks=3, min_blocks=1, iterations=40, batch_size=16, lr=5e-2, lr_schedule="constant",
                   patience=2, eval_every=4, progress=False)
    return JKOTrainer(flow, graph, x, y, JKOConfig(**{**options, **changes}), x_val=x_val, y_val=y_val), flow, (graph, x_val, y_val)


def test_a_block_stops_after_patience_measurements_and_keeps_its_best_weights():
    jko, flow, (graph, x_val, y_val) = trainer(max_blocks=1, iterations=400)
    measured = []
    objective = jko._objective

    def recording(block, position):
        measured.append(objective(block, position))
        return measured[-1]

    jko._objective = recording
    history = jko.fit()
    (record,) = history.records
    best = min(range(len(measured)), key=measured.__getitem__)
    assert record.minibatches < 400, "the test needs a block that stops early"
    assert len(measured) == best + 1 + 2 and record.minibatches == 4 * len(measured)
    # The block holds the weights of its best measurement, whose objective is recomputed here.
    assert objective(flow.blocks[0], jko.validation_data) == pytest.approx(measured[best], rel=1e-6)


def test_validation_nll_of_a_record_is_the_flows_by_the_training_map():
    jko, flow, (graph, x_val, y_val) = trainer(patience=None, iterations=8)
    history = jko.fit()
    flow.set_solver("rk4")
    with torch.no_grad():
        nll = float(-flow.log_prob(graph, x_val, y_val).mean())
    assert history.records[-1].val_nll == pytest.approx(nll, rel=1e-5)


def test_growth_drops_the_first_block_that_does_not_lower_the_validation_nll():
    jko, flow, _ = trainer(iterations=8)
    scripted = iter([10.0, 8.0, 8.0, 7.0, 7.0, 7.5])  # before / after each block
    jko._nll = lambda position: next(scripted)
    history = jko.fit()
    assert len(flow.blocks) == 2 and [r.block for r in history.records] == [0, 1]
    (dropped,) = history.discarded
    assert dropped.block == 2 and dropped.val_nll == 7.5
    assert history.minibatches == sum(r.minibatches for r in history.records) + dropped.minibatches
    assert flow.time_grid[-1] == history.records[-1].t1


def test_min_blocks_keeps_blocks_that_do_not_help():
    jko, flow, _ = trainer(iterations=8, min_blocks=3)
    jko._nll = lambda position: 1.0
    history = jko.fit()
    assert len(flow.blocks) == 3 and not history.discarded


def test_patience_needs_validation_data():
    graph, x, y = problem(32, seed=0)
    flow = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8))
    with pytest.raises(ValueError, match="x_val"):
        JKOTrainer(flow, graph, x, y, JKOConfig(patience=3))
    with pytest.raises(ValueError, match="patience"):
        JKOTrainer(flow, graph, x, y, JKOConfig(patience=0), x_val=x, y_val=y)
