"""Checkpoints load without running code: crafted payloads are refused, old files convert."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from dgl_iflow import IGNN, TrainConfig, fit
from dgl_iflow.checkpoints import (CheckpointError, convert_checkpoint, read_checkpoint, rng_state,
                                   set_rng_state)
from dgl_iflow.models import JKOFlow
from dgl_iflow.models.ignn import CHECKPOINT_FORMAT
from dgl_iflow.models.jko import CHECKPOINT_FORMAT as JKO_CHECKPOINT_FORMAT
from dgl_iflow.training import JKOConfig, fit_jko
from graphs import flat_state, path_graph, toy_data


class Payload:
    """Unpickling this object writes ``marker``: the code a malicious checkpoint would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def small_model() -> IGNN:
    return IGNN(path_graph(), feats=2, num_classes=2, conv="l3", num_blocks=2, hidden_feats=(8, 8))


def small_jko_model() -> JKOFlow:
    return JKOFlow(path_graph(), feats=2, num_classes=2, conv="l3", hidden_feats=(8, 8))


def test_fit_checkpoint_is_plain_data(tmp_path):
    path = tmp_path / "model.pt"
    x, y = toy_data(60)
    fit(small_model(), path_graph(), x, y, TrainConfig(epochs=1, batch_size=30, checkpoint_path=str(path),
                                                       progress=False, inversion_check_samples=5))
    checkpoint = torch.load(path, weights_only=True)  # raises on anything but plain data
    assert {"optimizer", "scheduler", "history", "rng", "train_config", "structure"} <= set(checkpoint)
    assert checkpoint["format"] == CHECKPOINT_FORMAT


def test_fit_jko_checkpoint_is_plain_data(tmp_path):
    path = tmp_path / "model.pt"
    x, y = toy_data(60)
    model = small_jko_model()
    fit_jko(model, path_graph(), x, y, JKOConfig(iterations=2, batch_size=30, max_blocks=2, tol=0.0,
                                                  checkpoint_path=str(path), progress=False))
    checkpoint = torch.load(path, weights_only=True)  # raises on anything but plain data
    assert checkpoint["format"] == JKO_CHECKPOINT_FORMAT
    assert len(model.blocks) == 2
    assert checkpoint["structure"] == dict(intervals=list(zip(model.time_grid, model.time_grid[1:])),
                                           solver=model.solver, divergence=model.divergence)
    assert {"position", "history", "rng", "order", "permutation", "config"} <= set(checkpoint["trainer"])
    restored = JKOFlow.load(path)
    assert restored.time_grid == model.time_grid
    torch.testing.assert_close(restored.log_prob(path_graph(), x, y), model.log_prob(path_graph(), x, y),
                               rtol=0, atol=0)


def test_a_checkpoint_of_one_model_is_refused_by_the_other(tmp_path):
    ignn, jko = tmp_path / "ignn.pt", tmp_path / "jko.pt"
    small_model().save(ignn)
    small_jko_model().save(jko)
    with pytest.raises(ValueError, match=f"not a JKOFlow checkpoint: format '{CHECKPOINT_FORMAT}'"):
        JKOFlow.load(ignn)
    with pytest.raises(ValueError, match=f"not a IGNN checkpoint: format '{JKO_CHECKPOINT_FORMAT}'"):
        IGNN.load(jko)
    with pytest.raises(ValueError, match="holds format"):
        small_model().load_weights(jko)
    with pytest.raises(ValueError, match="holds format"):
        small_jko_model().load_weights(ignn)


def test_random_states_round_trip():
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    state = rng_state()
    expected = (random.random(), np.random.standard_normal(3), torch.randn(3))
    np.random.standard_normal()  # leave NumPy with a cached Gaussian, which must be restored too
    set_rng_state(state)
    again = (random.random(), np.random.standard_normal(3), torch.randn(3))
    assert expected[0] == again[0] and np.array_equal(expected[1], again[1])
    assert torch.equal(expected[2], again[2])


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_payload_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    checkpoint = {**small_model().checkpoint(), "extra": Payload(str(marker))}
    if writer == "torch.save":
        torch.save(checkpoint, path)
    else:
        path.write_bytes(pickle.dumps(checkpoint))
    # The payload is real: an unrestricted load runs it.
    torch.load(path, weights_only=False) if writer == "torch.save" else pickle.loads(path.read_bytes())
    assert marker.read_text() == "ran"
    marker.unlink()

    for load in (IGNN.load, JKOFlow.load, read_checkpoint, small_model().load_weights,
                 small_jko_model().load_weights):
        with pytest.raises(CheckpointError, match=r"refused.*(__builtin__|builtins)\.exec.*could run code"):
            load(path)
    with pytest.raises(CheckpointError, match="refused|not a torch.save archive"):
        convert_checkpoint(path, tmp_path / "converted.pt")
    assert not marker.exists(), "loading must not run code from the file"
    assert not (tmp_path / "converted.pt").exists()


def old_format_checkpoint(path, model: IGNN) -> dict:
    """What ``fit`` wrote before checkpoints were plain data: NumPy's state as an array."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    rng = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    torch.save({**model.checkpoint(), "epoch": 1, "history": [{"epoch": 1, "loss": 1.0}],
                "rng": rng}, path)
    return rng


def test_old_checkpoint_gets_a_conversion_hint_and_converts(tmp_path):
    model = small_model()
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    saved = old_format_checkpoint(old, model)
    with pytest.raises(CheckpointError, match=f"dgl-iflow convert-checkpoint {old} NEW.pt"):
        IGNN.load(old)
    convert_checkpoint(old, new)
    restored = IGNN.load(new)
    restored_state, state = flat_state(restored.state_dict()), flat_state(model.state_dict())
    assert restored_state.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(restored_state[name], value) if isinstance(value, torch.Tensor) \
            else restored_state[name] == value, name
    set_rng_state(read_checkpoint(new)["rng"])
    assert random.getstate() == saved["python"]
    legacy = np.random.get_state()
    assert legacy[0] == saved["numpy"][0] and np.array_equal(legacy[1], saved["numpy"][1])
    assert legacy[2:] == saved["numpy"][2:]
    assert torch.equal(torch.get_rng_state(), saved["torch"])
