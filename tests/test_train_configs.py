"""TrainConfig and JKOConfig check themselves when built; fit resumes a run with more epochs."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dgl_iflow import IGNN, JKOConfig, TrainConfig, fit
from dgl_iflow.checkpoints import read_checkpoint
from graphs import path_graph, toy_data


@pytest.mark.parametrize("changes, message", [
    (dict(epochs=0), "TrainConfig.epochs must be an integer >= 1, got 0"),
    (dict(epochs=-3), "TrainConfig.epochs must be an integer >= 1, got -3"),
    (dict(epochs=2.5), "TrainConfig.epochs must be an integer >= 1, got 2.5"),
    (dict(epochs=True), "TrainConfig.epochs must be an integer >= 1, got True"),
    (dict(batch_size=0), "TrainConfig.batch_size must be an integer >= 1, got 0"),
    (dict(chunk_size=0), "TrainConfig.chunk_size must be an integer >= 1 or None, got 0"),
    (dict(lr=-1), "TrainConfig.lr must be a number > 0, got -1"),
    (dict(lr=0.0), "TrainConfig.lr must be a number > 0, got 0.0"),
    (dict(lr=math.nan), "TrainConfig.lr must be a number > 0, got nan"),
    (dict(lr="0.1"), "TrainConfig.lr must be a number > 0, got '0.1'"),
    (dict(weight_decay=-0.1), "TrainConfig.weight_decay must be a number >= 0"),
    (dict(lr_schedule="step"), "lr_schedule must be one of"),
    (dict(classification_weight=-1), "TrainConfig.classification_weight must be a number >= 0"),
    (dict(transport_weight=math.inf), "TrainConfig.transport_weight must be a number >= 0"),
    (dict(inversion_check_samples=-1), "TrainConfig.inversion_check_samples must be an integer >= 0"),
    (dict(inversion_check_iterations=0), "TrainConfig.inversion_check_iterations must be an integer >= 1"),
    (dict(inversion_rescale=1.0), r"TrainConfig.inversion_rescale must be a number in \(0, 1\), got 1.0"),
    (dict(final_check_repeats=-1), "TrainConfig.final_check_repeats must be an integer >= 0"),
    (dict(patience=0), "TrainConfig.patience must be an integer >= 1 or None, got 0"),
    (dict(seed=-1), "TrainConfig.seed must be an integer >= 0"),
    (dict(seed=2**32), r"TrainConfig.seed must be below 2\*\*32"),
    (dict(device="gpu"), "TrainConfig.device must name a torch device"),
])
def test_train_config_refuses_bad_settings_in_one_line(changes, message):
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig(**changes)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **changes)


@pytest.mark.parametrize("changes, message", [
    (dict(h0=0), "JKOConfig.h0 must be a number > 0, got 0"),
    (dict(rho=-1.4), "JKOConfig.rho must be a number > 0"),
    (dict(h_max=math.inf), "JKOConfig.h_max must be a number > 0"),
    (dict(lr=-0.01), "JKOConfig.lr must be a number > 0"),
    (dict(tol=-0.1), "JKOConfig.tol must be a number >= 0"),
    (dict(eta=0.0), r"JKOConfig.eta must be a number in \(0, 1\]"),
    (dict(eta=1.5), r"JKOConfig.eta must be a number in \(0, 1\]"),
    (dict(grad_clip=0.0), "JKOConfig.grad_clip must be a number > 0 or None"),
    (dict(round_trip_tol=-1e-4), "JKOConfig.round_trip_tol must be a number > 0 or None"),
    (dict(max_blocks=0), "JKOConfig.max_blocks must be an integer >= 1"),
    (dict(iterations=0), "JKOConfig.iterations must be an integer >= 1"),
    (dict(retrain_iterations=0), "JKOConfig.retrain_iterations must be an integer >= 1 or None"),
    (dict(batch_size=0), "JKOConfig.batch_size must be an integer >= 1"),
    (dict(eval_every=0), "JKOConfig.eval_every must be an integer >= 1"),
    (dict(check_samples=0), "JKOConfig.check_samples must be an integer >= 1"),
    (dict(max_steps=0), "JKOConfig.max_steps must be an integer >= 1"),
    (dict(push_batch_size=0), "JKOConfig.push_batch_size must be an integer >= 1"),
    (dict(min_blocks=-1), "JKOConfig.min_blocks must be an integer >= 0"),
    (dict(reparametrize_rounds=-1), "JKOConfig.reparametrize_rounds must be an integer >= 0"),
    (dict(refine_rounds=1.5), "JKOConfig.refine_rounds must be an integer >= 0"),
    (dict(patience=0), "JKOConfig.patience must be an integer >= 1 or None"),
    (dict(lr_schedule="linear"), "lr_schedule must be one of"),
    (dict(seed=-2), "JKOConfig.seed must be an integer >= 0"),
    (dict(device="nowhere"), "JKOConfig.device must name a torch device"),
])
def test_jko_config_refuses_bad_settings_in_one_line(changes, message):
    with pytest.raises(ValueError, match=message) as error:
        JKOConfig(**changes)
    assert "\n" not in str(error.value)


def test_defaults_and_the_settings_in_use_pass():
    TrainConfig()
    JKOConfig()
    TrainConfig(epochs=1, batch_size=1, chunk_size=None, lr=1e-9, weight_decay=0.0, classification_weight=0.0,
                transport_weight=0.0, inversion_check_samples=0, final_check_repeats=0, patience=None, seed=0,
                device="cpu")
    JKOConfig(tol=0.0, min_blocks=0, eta=1.0, grad_clip=None, round_trip_tol=None, device="cuda:0")


def test_fit_checks_a_configuration_changed_after_it_was_built():
    x, y = toy_data(20)
    config = TrainConfig(epochs=1, progress=False)
    config.epochs = 0  # a dataclass field, assignable: fit checks again
    model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=1, hidden_feats=(4, 4))
    with pytest.raises(ValueError, match="TrainConfig.epochs must be an integer >= 1, got 0"):
        fit(model, path_graph(), x, y, config)


def small_run(tmp_path, epochs: int, **changes) -> tuple[IGNN, TrainConfig]:
    torch.manual_seed(0)
    model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=1, hidden_feats=(4, 4))
    config = TrainConfig(epochs=epochs, batch_size=20, lr=1e-2, progress=False, inversion_check_samples=5,
                         checkpoint_path=str(tmp_path / "run.pt"), **changes)
    return model, config


def test_fit_resumes_a_finished_run_with_more_epochs(tmp_path):
    x, y = toy_data(60)
    model, config = small_run(tmp_path, 2, label_vector_gaussians=True)
    first = fit(model, path_graph(), x, y, config)
    resumed, _ = small_run(tmp_path, 2)
    history = fit(resumed, path_graph(), x, y, dataclasses.replace(config, epochs=4), resume_from=tmp_path / "run.pt")
    assert [record["epoch"] for record in history.epochs] == [1, 2, 3, 4]
    assert history.epochs[:2] == first.epochs
    # The schedule continues on the cosine over 4 epochs, down to lr / 100 at the end.
    floor = 1e-2 / 100
    for record in history.epochs[2:]:
        expected = floor + (1e-2 - floor) * (1 + math.cos(math.pi * record["epoch"] / 4)) / 2
        assert record["lr"] == pytest.approx(expected)
    saved = read_checkpoint(tmp_path / "run.pt")
    assert saved["epoch"] == 4 and saved["train_config"]["epochs"] == 4
    assert resumed.latent.joint_means is not None  # fitted again, to the weights of epoch 4
    assert history.final_shrinks is not None


def test_fit_says_which_settings_differ_and_refuses_fewer_epochs(tmp_path):
    x, y = toy_data(60)
    model, config = small_run(tmp_path, 2)
    fit(model, path_graph(), x, y, config)
    other, _ = small_run(tmp_path, 2)
    with pytest.raises(ValueError) as error:
        fit(other, path_graph(), x, y, dataclasses.replace(config, epochs=5, lr=0.5, batch_size=10),
            resume_from=tmp_path / "run.pt")
    message = str(error.value)
    assert "differs in batch_size 20 -> 10, lr 0.01 -> 0.5 (saved -> given)" in message
    assert "only epochs may grow" in message and "epochs 2" not in message and "\n" not in message
    with pytest.raises(ValueError, match="it has trained 2 epochs already; pass epochs >= 2"):
        fit(other, path_graph(), x, y, dataclasses.replace(config, epochs=1), resume_from=tmp_path / "run.pt")


def test_fit_refuses_to_extend_a_finished_run_with_patience(tmp_path):
    x, y = toy_data(60)
    model, config = small_run(tmp_path, 2, patience=5)
    fit(model, path_graph(), x, y, config, x_val=x[:20], y_val=y[:20])
    other, _ = small_run(tmp_path, 2)
    with pytest.raises(ValueError, match="a run with patience ends on its best epoch's weights"):
        fit(other, path_graph(), x, y, dataclasses.replace(config, epochs=4), resume_from=tmp_path / "run.pt",
            x_val=x[:20], y_val=y[:20])
