"""The discriminative head: logistic regression on [X, F(X)], and nothing else of the model changes."""
from __future__ import annotations

import pytest
import torch

from dgl_iflow import IGNN, JKOFlow, TrainConfig, fit
from dgl_iflow.baselines import NodeLogistic
from graphs import path_graph, toy_data


def _model() -> IGNN:
    torch.manual_seed(0)
    return IGNN(path_graph(), 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8), sigma=0.7).double()


def _rows(n: int = 80, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n, 3), generator=gen)
    x = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64) + 1.5 * y.unsqueeze(-1).double()
    return x, y


def test_readout_is_logistic_regression_on_features_and_latent_and_leaves_the_rest_alone():
    model, graph = _model(), path_graph()
    x, y = _rows()
    probe, probe_y = _rows(10, seed=1)
    bayes = model.predict_proba(graph, probe)
    log_prob = model.log_prob(graph, probe, probe_y)
    torch.manual_seed(3)
    drawn = model.sample(graph, probe_y[0], 5)
    model.fit_readout(graph, x, y)
    h = model.encode(graph, x, logdet=False)[0]
    reference = NodeLogistic(torch.cat([x, h], -1), y, features="all")
    h_probe = model.encode(graph, probe, logdet=False)[0]
    torch.testing.assert_close(model.predict_proba(graph, probe), reference.predict_proba(torch.cat([probe, h_probe], -1)))
    assert not torch.allclose(model.predict_proba(graph, probe), bayes)
    torch.testing.assert_close(model.log_prob(graph, probe, probe_y), log_prob, rtol=0, atol=0)
    torch.manual_seed(3)
    torch.testing.assert_close(model.sample(graph, probe_y[0], 5), drawn, rtol=0, atol=0)
    model.readout.clear()
    torch.testing.assert_close(model.predict_proba(graph, probe), bayes)


def test_readout_travels_in_checkpoints_and_older_checkpoints_load_without_it(tmp_path):
    model, graph = _model(), path_graph()
    x, y = _rows()
    model.fit_readout(graph, x, y)
    model.save(tmp_path / "m.pt")
    loaded = IGNN.load(tmp_path / "m.pt").double()
    torch.testing.assert_close(loaded.predict_proba(graph, x), model.predict_proba(graph, x))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("readout.")}
    fresh = _model()
    fresh.load_state_dict(state)
    assert not fresh.readout.fitted


def test_fit_clears_a_stale_readout_and_fits_it_when_asked():
    model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8))
    x, y = toy_data(64)
    model.fit_readout(path_graph(), x, y)
    fit(model, path_graph(), x, y, TrainConfig(epochs=1, batch_size=32, progress=False))
    assert not model.readout.fitted
    fit(model, path_graph(), x, y, TrainConfig(epochs=1, batch_size=32, progress=False, readout=True))
    assert model.readout.fitted
    proba = model.predict_proba(path_graph(), x)
    assert proba.dtype == torch.float32 and proba.shape == (64, 3, 2)
    torch.testing.assert_close(proba.sum(-1), torch.ones(64, 3))


def test_an_unconditional_model_has_no_readout_to_fit():
    model = JKOFlow(path_graph(), 2, hidden_feats=(8, 8))
    with pytest.raises(ValueError, match="no labels"):
        model.fit_readout(path_graph(), *_rows())


def test_a_readout_too_large_is_refused_before_training(monkeypatch):
    import dgl_iflow.models.readout as readout

    monkeypatch.setattr(readout, "MAX_READOUT_WEIGHTS", 100)  # 3 nodes x 12 inputs x 2 classes = 72 fits
    model = IGNN(path_graph(), 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8))
    x, y = toy_data(32)
    monkeypatch.setattr(readout, "MAX_READOUT_WEIGHTS", 50)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match="72 weights"):
        fit(model, path_graph(), x, y, TrainConfig(epochs=1, batch_size=32, progress=False, readout=True))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
