"""Re-spacing and refinement stages are kept only when validation NLL improves; their figure."""
import copy

import pytest
import torch

from dgl_iflow import JKOConfig, JKOFlow, fit_jko
from dgl_iflow.plots import jko_movements
from dgl_iflow.training import JKOTrainer
from graphs import make_graph


def problem(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    graph = make_graph(([0, 1, 1, 2], [1, 0, 2, 1]))
    y = torch.randint(0, 2, (n, 3), generator=generator)
    x = 2.0 * y.unsqueeze(-1).float() - 1.0 + 0.5 * torch.randn(n, 3, 2, generator=generator)
    return graph, x, y


def config(**changes) -> JKOConfig:
    options = dict(max_blocks=3, min_blocks=3, iterations=8, batch_size=16, reparametrize_rounds=1, refine_rounds=1,
                   progress=False)
    return JKOConfig(**{**options, **changes})


def model(graph) -> JKOFlow:
    torch.manual_seed(1)
    return JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8))


def test_a_stage_that_raises_validation_nll_is_rolled_back_exactly():
    graph, x, y = problem()
    x_val, y_val = problem(32, seed=1)[1:]
    flow = model(graph)
    trainer = JKOTrainer(flow, graph, x, y, config(refine_rounds=0), x_val=x_val, y_val=y_val)
    seen = []

    def validation_nll() -> float:  # before the stage: remember the model; after: report it worse
        seen.append((copy.deepcopy(flow.state_dict()), flow.time_grid))
        return 1.0 if len(seen) == 1 else 2.0

    trainer.validation_nll = validation_nll
    history = trainer.fit()
    (state_before, grid_before), (_, grid_after) = seen
    assert grid_after != grid_before  # the stage did re-space the grid
    assert flow.time_grid == grid_before
    for name, value in flow.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state_before[name]), name
    (decision,) = history.decisions
    assert (decision.stage, decision.nll_before, decision.nll_after, decision.kept) == ("reparametrize 1", 1.0, 2.0, False)
    assert history.kept_stages() == ["grow"] and history.stage() == history.stage("grow")


def test_decisions_follow_the_validation_nll():
    graph, x, y = problem()
    x_val, y_val = problem(32, seed=1)[1:]
    flow = model(graph)
    history = fit_jko(flow, graph, x, y, config(), x_val=x_val, y_val=y_val)
    assert [decision.stage for decision in history.decisions] == ["reparametrize 1", "refine 1"]
    for decision in history.decisions:
        assert decision.kept == (decision.nll_after < decision.nll_before)
    with torch.no_grad():
        final = float(-flow.log_prob(graph, x_val, y_val).mean())
    last = history.decisions[-1]
    torch.testing.assert_close(final, last.nll_after if last.kept else last.nll_before, rtol=1e-6, atol=0)
    assert len(flow.blocks) == len(history.stage())
    without = fit_jko(model(graph), graph, x, y, config())
    assert all(decision.kept for decision in without.decisions)


def test_movement_figure(tmp_path):
    graph, x, y = problem()
    flow = model(graph)
    history = fit_jko(flow, graph, x, y, config())
    samples = flow.sample(graph, y[0], n=50, generator=torch.Generator().manual_seed(0))
    path = jko_movements(history, tmp_path / "movements.png", generated=samples, real=x[:50], title="toy")
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 2 * image.shape[0]  # two panels side by side
    assert image[..., :3].std() > 0.05  # something is drawn
    alone = jko_movements(history, tmp_path / "alone.png")
    assert imread(alone).shape[1] < image.shape[1]
    with pytest.raises(ValueError, match="no blocks"):
        jko_movements(type(history)(), tmp_path / "empty.png")
