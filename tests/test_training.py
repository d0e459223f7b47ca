"""The training loop: determinism, resuming, the inversion check, bad input."""
from __future__ import annotations

import pytest
import torch

from dgl_iflow import IGNN, TrainConfig, fit
from dgl_iflow.training import inversion_error, repair_invertibility
from graphs import path_graph


def toy_data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n, 3), generator=generator)
    x = torch.stack([torch.zeros_like(y, dtype=torch.float32), 2.0 * y - 1.0], -1)
    return x + 0.3 * torch.randn(x.shape, generator=generator), y


def make_model() -> IGNN:
    torch.manual_seed(0)
    return IGNN(path_graph(), 2, 2, conv="l3", num_blocks=2, hidden_feats=(16, 16), sigma=0.3,
                means=[[0.0, -1.0], [0.0, 1.0]])


def parameters(model: IGNN) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def quick_config(**overrides) -> TrainConfig:
    settings = dict(epochs=4, batch_size=40, lr=5e-3, progress=False, seed=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_training_lowers_the_loss_and_predicts():
    x, y = toy_data()
    model = make_model()
    history = fit(model, x, y, quick_config(epochs=15))
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"] - 0.3
    proba = model.predict_proba(model.graph, x.transpose(0, 1))
    accuracy = (proba.argmax(-1) == y.transpose(0, 1)).float().mean()
    assert accuracy > 0.9
    assert history.last()["inversion_error"] < 1e-4


def test_same_seed_same_model():
    x, y = toy_data()
    first, second = make_model(), make_model()
    fit(first, x, y, quick_config())
    fit(second, x, y, quick_config())
    assert torch.equal(parameters(first), parameters(second))


class Interrupted(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    x, y = toy_data()
    uninterrupted = make_model()
    fit(uninterrupted, x, y, quick_config())
    checkpoint = tmp_path / "run.pt"

    def stop_after_two(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(make_model(), x, y, quick_config(checkpoint_path=str(checkpoint)), callback=stop_after_two)
    resumed = make_model()
    history = fit(resumed, x, y, quick_config(checkpoint_path=str(checkpoint)), resume_from=checkpoint)
    assert [record["epoch"] for record in history.epochs] == [1, 2, 3, 4]
    assert torch.allclose(parameters(resumed), parameters(uninterrupted), atol=1e-6)


def blow_up(model: IGNN, blocks: list[int], factor: float = 100.0) -> None:
    with torch.no_grad():
        for index in blocks:
            model.flow.blocks[index].residual.linears[-1].weight.mul_(factor)


def last_layer_norms(model: IGNN) -> list[float]:
    return [float(block.residual.linears[-1].weight.norm()) for block in model.flow.blocks]


def test_failed_inversion_check_shrinks_the_failing_blocks_during_training():
    x, y = toy_data()
    model = make_model()
    blow_up(model, [0, 1])
    assert inversion_error(model, model.graph, x[:20]) > 1e-4
    before = last_layer_norms(model)
    history = fit(model, x, y, quick_config(epochs=1, lr=1e-6))
    assert history.last()["shrinks"] >= 1
    assert any(after < 0.95 * previous for after, previous in zip(last_layer_norms(model), before))
    assert inversion_error(model, model.graph, x) < 1e-4


def test_repair_shrinks_only_the_blocks_that_fail():
    x, y = toy_data()
    model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=3, hidden_feats=(16, 16), sigma=0.3)
    blow_up(model, [1])
    before = last_layer_norms(model)
    shrinks = repair_invertibility(model, model.graph, lambda: model.latent.sample(y.transpose(0, 1)), factor=0.8)
    after = last_layer_norms(model)
    assert shrinks >= 1
    assert after[0] == before[0] and after[2] == before[2]
    assert abs(after[1] / before[1] - 0.8 ** shrinks) < 1e-4
    samples = model.sample(model.graph, torch.tensor([0, 1, 0]), 500)
    assert torch.isfinite(samples).all()


def test_bad_training_input():
    x, y = toy_data()
    model = make_model()
    with pytest.raises(ValueError, match=r"\(N, V, d\) = \(N, 3, 2\)"):
        fit(model, x.transpose(0, 1), y, quick_config())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\); found \[5\]"):
        fit(model, x, torch.full_like(y, 5), quick_config())
    with pytest.raises(ValueError, match="no samples"):
        fit(model, x[:0], y[:0], quick_config())
    bad = x.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit(model, bad, y, quick_config())
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(model, x, y, quick_config(lr_schedule="linear"))


def test_frozen_gc_is_undone_on_exit_and_on_error():
    import gc

    from dgl_iflow.training.fit import frozen_gc

    assert gc.get_freeze_count() == 0
    with frozen_gc():
        assert gc.get_freeze_count() > 0
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # objects made inside are still collected
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), frozen_gc():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0
