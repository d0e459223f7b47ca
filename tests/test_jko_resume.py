"""A killed fit_jko resumes from its last finished block and ends as the uninterrupted run."""
import pytest
import torch

from dgl_iflow import JKOConfig, JKOFlow, fit_jko
from graphs import make_graph


class Killed(RuntimeError):
    pass


def problem():
    generator = torch.Generator().manual_seed(0)
    graph = make_graph(([0, 1, 1, 2], [1, 0, 2, 1]))
    y = torch.randint(0, 2, (64, 3), generator=generator)
    x = 2.0 * y.unsqueeze(-1).float() - 1.0 + 0.5 * torch.randn(64, 3, 2, generator=generator)
    return graph, x, y


def config(path, **changes) -> JKOConfig:
    options = dict(max_blocks=3, min_blocks=3, iterations=6, batch_size=16, reparametrize_rounds=1, refine_rounds=1,
                   progress=False, checkpoint_path=str(path))
    options.update(changes)
    return JKOConfig(**options)


def comparable(history):
    """Every record's fields but timings, with nan (no validation data) made comparable."""
    return [{key: None if value != value else value for key, value in vars(record).items()
             if key not in ("seconds", "saved_bytes")}
            for record in history.records + history.discarded]


@pytest.mark.parametrize("divergence, validation, patience",
                         [("exact", False, None), ("hutchinson", False, None), ("exact", True, None), ("exact", True, 1)])
@pytest.mark.parametrize("kill_after", [2, 4, 7])
def test_resumed_run_is_identical(tmp_path, kill_after, divergence, validation, patience):
    graph, x, y = problem()
    held_out = dict(x_val=x[:16], y_val=y[:16]) if validation else {}
    stopping = dict(patience=patience, eval_every=2)
    torch.manual_seed(1)
    whole = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8), divergence=divergence)
    expected = fit_jko(whole, graph, x, y, config(tmp_path / "whole.pt", **stopping), **held_out)

    finished = []

    def kill(record):
        finished.append(record)
        if len(finished) == kill_after:
            raise Killed

    torch.manual_seed(1)
    killed = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8), divergence=divergence)
    with pytest.raises(Killed):
        fit_jko(killed, graph, x, y, config(tmp_path / "run.pt", **stopping), callback=kill, **held_out)
    # The kill came inside the callback, before that block's checkpoint: resume from the one before.
    torch.manual_seed(123)  # a different caller state must not matter
    resumed = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8), divergence=divergence)
    history = fit_jko(resumed, graph, x, y, config(tmp_path / "run.pt", **stopping), resume_from=tmp_path / "run.pt",
                      **held_out)

    assert comparable(history) == comparable(expected)
    assert [repr(d) for d in history.decisions] == [repr(d) for d in expected.decisions]  # nan != nan
    assert resumed.time_grid == whole.time_grid
    for (name, got), want in zip(resumed.state_dict().items(), whole.state_dict().values()):
        if isinstance(got, torch.Tensor):
            assert torch.equal(got, want), name


def test_resume_refuses_another_configuration(tmp_path):
    graph, x, y = problem()
    model = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8))
    fit_jko(model, graph, x, y, config(tmp_path / "run.pt", max_blocks=1, min_blocks=1, reparametrize_rounds=0,
                                       refine_rounds=0))
    fresh = JKOFlow(graph, 2, 2, conv="l3", hidden_feats=(8, 8))
    with pytest.raises(ValueError, match=r"JKOConfig differs in lr [0-9.e-]+ -> 0\.5 \(saved -> given\)"):
        fit_jko(fresh, graph, x, y, config(tmp_path / "other.pt", max_blocks=1, min_blocks=1, reparametrize_rounds=0,
                                           refine_rounds=0, lr=0.5), resume_from=tmp_path / "run.pt")
