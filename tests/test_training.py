"""The training loop: determinism, resuming, the inversion check, validation and early stopping, bad input."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import random

import numpy as np
import pytest
import torch

from dgl_iflow import IGNN, TrainConfig, fit
from dgl_iflow.training import repair_invertibility
from graphs import line_graph, path_graph, toy_data


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
    history = fit(model, path_graph(), x, y, quick_config(epochs=15))
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"] - 0.3
    proba = model.predict_proba(path_graph(), x)
    assert proba.shape == (120, 3, 2)
    accuracy = (proba.argmax(-1) == y).float().mean()
    assert accuracy > 0.9
    assert history.last()["inversion_error"] < 1e-4


def test_a_float64_model_trains_in_float64():
    x, y = toy_data(40)
    model = make_model().double()
    history = fit(model, path_graph(), x, y, quick_config(epochs=2))  # float32 data, converted to the model's
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(epoch["loss"])) for epoch in history.epochs)


def test_same_seed_same_model():
    x, y = toy_data()
    first, second = make_model(), make_model()
    fit(first, path_graph(), x, y, quick_config())
    fit(second, path_graph(), x, y, quick_config())
    assert torch.equal(parameters(first), parameters(second))


def test_the_seed_alone_decides_the_run():
    """Whatever the caller's random state, one seed gives identical parameters, another seed others."""
    x, y = toy_data()
    initial = make_model()
    models = [copy.deepcopy(initial) for _ in range(3)]
    for model, caller_seed, seed in zip(models, (1, 2, 1), (3, 3, 4)):
        torch.manual_seed(caller_seed), np.random.seed(caller_seed), random.seed(caller_seed)
        fit(model, path_graph(), x, y, quick_config(seed=seed))
    assert torch.equal(parameters(models[0]), parameters(models[1]))
    assert not torch.equal(parameters(models[0]), parameters(models[2]))
    assert not torch.equal(parameters(models[0]), parameters(initial))


def random_states() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def assert_same_random_states(before: tuple, after: tuple) -> None:
    assert before[0] == after[0]
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:]
    assert torch.equal(before[2], after[2])


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_fit_leaves_the_callers_random_states_alone(fails):
    x, y = toy_data()
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    np.random.standard_normal()  # NumPy caches a Gaussian: part of its state too
    before = random_states()
    inside = []

    def record(epoch: int, _record: dict) -> None:
        inside.append(random_states())
        if fails:
            raise Interrupted

    with pytest.raises(Interrupted) if fails else contextlib.nullcontext():
        fit(make_model_without_seeding(), path_graph(), x, y, quick_config(epochs=2), callback=record)
    assert_same_random_states(before, random_states())
    # Negative control: inside the run the streams were the config's seed, not the caller's.
    random.seed(3), np.random.seed(3)
    assert inside[0][0] == random.getstate() != before[0]
    assert np.array_equal(inside[0][1][1], np.random.get_state()[1])
    assert not torch.equal(inside[0][2], before[2])


def test_seed_everything_seeds_python_numpy_and_torch():
    from dgl_iflow.training.common import seed_everything

    draws = []
    for _ in range(2):
        seed_everything(7)
        draws.append((random.random(), np.random.standard_normal(2), torch.randn(2)))
    assert draws[0][0] == draws[1][0] and np.array_equal(draws[0][1], draws[1][1])
    assert torch.equal(draws[0][2], draws[1][2])
    seed_everything(8)
    assert random.random() != draws[0][0]


def make_model_without_seeding() -> IGNN:
    """A model whose initial weights come from a private generator, leaving the global streams as they are."""
    with torch.random.fork_rng(devices=[]):
        return make_model()


class Interrupted(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    x, y = toy_data()
    uninterrupted = make_model()
    fit(uninterrupted, path_graph(), x, y, quick_config())
    checkpoint = tmp_path / "run.pt"

    def stop_after_two(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(make_model(), path_graph(), x, y, quick_config(checkpoint_path=str(checkpoint)), callback=stop_after_two)
    resumed = make_model()
    history = fit(resumed, path_graph(), x, y, quick_config(checkpoint_path=str(checkpoint)), resume_from=checkpoint)
    assert [record["epoch"] for record in history.epochs] == [1, 2, 3, 4]
    assert torch.allclose(parameters(resumed), parameters(uninterrupted), atol=1e-6)
    with pytest.raises(ValueError, match=r"TrainConfig differs in lr [0-9.e-]+ -> 0\.5 \(saved -> given\)"):
        fit(make_model(), path_graph(), x, y, quick_config(lr=0.5), resume_from=checkpoint)


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
    assert float(model.round_trip_error(path_graph(), x[:20], relative=True, max_iter=200).max()) > 1e-4
    diverging = make_model().eval()
    blow_up(diverging, [0], 1e4)
    assert torch.isinf(diverging.round_trip_error(path_graph(), x[:5], relative=True)).all()
    before = last_layer_norms(model)
    history = fit(model, path_graph(), x, y, quick_config(epochs=1, lr=1e-6))
    assert history.last()["shrinks"] >= 1
    assert any(after < 0.95 * previous for after, previous in zip(last_layer_norms(model), before))
    assert float(model.round_trip_error(path_graph(), x, relative=True, max_iter=200).max()) < 1e-4


def test_repair_shrinks_only_the_blocks_that_fail():
    x, y = toy_data()
    model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=3, hidden_feats=(16, 16), sigma=0.3)
    blow_up(model, [1])
    before = last_layer_norms(model)
    shrinks = repair_invertibility(model, path_graph(), lambda: model.latent.sample(y), factor=0.8)
    after = last_layer_norms(model)
    assert shrinks >= 1
    assert after[0] == before[0] and after[2] == before[2]
    assert abs(after[1] / before[1] - 0.8 ** shrinks) < 1e-4
    samples = model.sample(path_graph(), torch.tensor([0, 1, 0]), 500)
    assert samples.shape == (500, 3, 2)
    assert torch.isfinite(samples).all()


def test_bad_training_input():
    x, y = toy_data()
    model = make_model()
    graph = path_graph()
    with pytest.raises(ValueError, match=r"\(N, V, d\) = \(N, 3, 2\), got \(3, 120, 2\)"):
        fit(model, graph, torch.randn(3, 120, 2), y, quick_config())  # node-first features
    with pytest.raises(ValueError, match=r"labels must have shape \(N, V\) = \(120, 3\), got \(3, 120\)"):
        fit(model, graph, x, torch.zeros(3, 120, dtype=torch.long), quick_config())  # node-first labels
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\); found \[5\]"):
        fit(model, graph, x, torch.full_like(y, 5), quick_config())
    with pytest.raises(ValueError, match="training features is an empty batch"):
        fit(model, graph, x[:0], y[:0], quick_config())
    bad = x.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit(model, graph, bad, y, quick_config())
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(model, graph, x, y, quick_config(lr_schedule="linear"))
    with pytest.raises(ValueError, match="graph of 3 nodes"):
        fit(model, line_graph(4), x, y, quick_config())
    with pytest.raises(ValueError, match=r"validation features must have shape"):
        fit(model, graph, x, y, quick_config(), x_val=x[:, :2], y_val=y[:, :2])


def test_frozen_gc_is_undone_on_exit_and_on_error():
    import gc

    from dgl_iflow.training.common import frozen_gc

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


def overfitting_run(**overrides) -> tuple:
    """Eight training samples at a constant rate: the validation NLL falls for a few epochs, then rises.

    The model is float64, so a validation NLL computed apart matches the recorded one to rounding.
    """
    x, y = toy_data(8, seed=2)
    x_val, y_val = toy_data(60, seed=1)
    config = quick_config(**{**dict(epochs=60, batch_size=8, lr=5e-3, lr_schedule="constant"), **overrides})
    return make_model().double(), x, y, dict(x_val=x_val.double(), y_val=y_val), config


def validation_nll(model: IGNN, x_val: torch.Tensor, y_val: torch.Tensor) -> float:
    with torch.no_grad():
        return float(-model.eval().log_prob(path_graph(), x_val, y_val).mean())


@pytest.fixture
def repairs(monkeypatch) -> list:
    """``(latents checked, parameters after the repair)`` of every ``repair_invertibility`` call of ``fit``."""
    fit_module = importlib.import_module("dgl_iflow.training.fit")  # the package's `fit` is the function
    calls = []

    def spy(model, graph, latents, *args, **kwargs):
        sizes = []

        def counted() -> torch.Tensor:
            drawn = latents()
            sizes.append(len(drawn))
            return drawn

        shrinks = repair_invertibility(model, graph, counted, *args, **kwargs)
        calls.append((sizes[0], parameters(model)))
        return shrinks

    monkeypatch.setattr(fit_module, "repair_invertibility", spy)
    return calls


def test_without_patience_every_epoch_runs_and_records_its_validation_nll(repairs):
    model, x, y, validation, config = overfitting_run(epochs=10)
    apart = []
    history = fit(model, path_graph(), x, y, config, **validation,
                  callback=lambda epoch, record: apart.append(validation_nll(model, **validation)))
    recorded = [record["val_nll"] for record in history.epochs]
    assert len(recorded) == 10 and not history.stopped_early
    assert recorded == pytest.approx(apart, abs=1e-12)
    assert history.best_epoch == 1 + recorded.index(min(recorded)) < 10  # the run overfits: not the last
    assert validation_nll(model, **validation) == pytest.approx(recorded[-1], abs=1e-12)  # not restored
    checks = len(validation["x_val"])  # encoded, and as many drawn per repeat
    assert [size for size, _ in repairs] == [2 * checks] * 9 + [(1 + config.final_check_repeats) * checks]
    assert history.final_shrinks == history.last()["shrinks"]


@pytest.mark.parametrize("epochs", [60, 6], ids=["stops", "runs-out"])
def test_patience_restores_the_best_epoch_and_checks_it_once(repairs, epochs):
    model, x, y, validation, config = overfitting_run(epochs=epochs, patience=3)
    history = fit(model, path_graph(), x, y, config, **validation)
    recorded = [record["val_nll"] for record in history.epochs]
    assert history.best_epoch == 1 + recorded.index(min(recorded)) < len(recorded)
    if epochs == 60:
        assert history.stopped_early
        assert len(recorded) == history.best_epoch + config.patience
    else:  # patience would have waited longer: every epoch ran, and still the best one is returned
        assert not history.stopped_early and len(recorded) == epochs
    assert history.final_shrinks == 0
    assert validation_nll(model, **validation) == pytest.approx(min(recorded), abs=1e-6)
    # One check per epoch, then the one with the repeats, on the weights returned.
    checks = len(validation["x_val"])  # encoded, and as many drawn per repeat
    assert [size for size, _ in repairs] == [2 * checks] * len(recorded) + [(1 + config.final_check_repeats) * checks]
    assert torch.equal(repairs[-1][1], parameters(model))


def test_patience_needs_validation_data():
    model, x, y, validation, config = overfitting_run(patience=3)
    with pytest.raises(ValueError, match="patience stops on the validation NLL: pass x_val"):
        fit(model, path_graph(), x, y, config)
    with pytest.raises(ValueError, match=r"TrainConfig\.patience must be an integer >= 1 or None, got 0"):
        fit(model, path_graph(), x, y, dataclasses.replace(config, patience=0), **validation)


def test_validation_leaves_the_training_streams_alone():
    """The log-determinant estimator draws probes: validating must not move what training draws."""
    x, y = toy_data(40)

    def trained(**validation) -> torch.Tensor:
        torch.manual_seed(0)
        model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8), logdet="estimator")
        history = fit(model, path_graph(), x, y, quick_config(epochs=2), **validation)
        assert ("val_nll" in history.last()) == bool(validation)
        return parameters(model)

    # The validation samples are the training ones, so the inversion checks see the same samples.
    assert torch.equal(trained(), trained(x_val=x, y_val=y))


def test_resume_with_patience_continues_exactly(tmp_path):
    model, x, y, validation, config = overfitting_run(patience=3)
    uninterrupted = fit(model, path_graph(), x, y, config, **validation)
    checkpoint = tmp_path / "run.pt"
    config = dataclasses.replace(config, checkpoint_path=str(checkpoint))
    # Stopped one epoch past the best: the weights to restore are only in the checkpoint.
    stop_at = uninterrupted.best_epoch + 1
    assert stop_at < len(uninterrupted.epochs)

    def interrupt(epoch: int, record: dict) -> None:
        if epoch == stop_at:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(overfitting_run()[0], path_graph(), x, y, config, **validation, callback=interrupt)
    resumed_model = overfitting_run()[0]
    resumed = fit(resumed_model, path_graph(), x, y, config, **validation, resume_from=checkpoint)

    def without_timings(history) -> dict:
        summary = dataclasses.asdict(history)
        summary["epochs"] = [{k: v for k, v in record.items() if k != "seconds"} for record in summary["epochs"]]
        return summary

    assert without_timings(resumed) == without_timings(uninterrupted)
    assert torch.equal(parameters(resumed_model), parameters(model))
    # A finished run resumes to itself: no more epochs, no second final check.
    again_model = overfitting_run()[0]
    again = fit(again_model, path_graph(), x, y, config, **validation, resume_from=checkpoint)
    assert without_timings(again) == without_timings(uninterrupted)
    assert torch.equal(parameters(again_model), parameters(model))


def test_chunks_give_the_whole_batch_gradient():
    """A mini-batch back-propagated in chunks (40 = 16 + 16 + 8) trains the same float64 model."""
    x, y = toy_data(80)
    whole, chunked = make_model().double(), make_model().double()
    config = quick_config(epochs=2, inversion_check_samples=0)
    first = fit(whole, path_graph(), x, y, config)
    second = fit(chunked, path_graph(), x, y, dataclasses.replace(config, chunk_size=16))
    torch.testing.assert_close(parameters(chunked), parameters(whole), rtol=1e-9, atol=1e-11)
    assert second.epochs[-1]["loss"] == pytest.approx(first.epochs[-1]["loss"], rel=1e-10)
    assert not torch.equal(parameters(whole), parameters(make_model().double()))


def test_chunk_size_must_be_positive():
    x, y = toy_data(40)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1 or None, got 0"):
        fit(make_model(), path_graph(), x, y, quick_config(epochs=1, chunk_size=0))
