"""Inputs as users hold them: float64 and numpy features, int32 and whole-float labels, lists,
converted once at the models' and trainers' boundary; what cannot be converted is one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dgl_iflow import IGNN, TrainConfig, fit
from dgl_iflow.inputs import as_features, as_labels
from graphs import path_graph, toy_data


@pytest.fixture(scope="module")
def trained():
    x, y = toy_data(48)
    torch.manual_seed(0)
    model = IGNN(path_graph(), feats=2, num_classes=2, conv="cheb", num_blocks=2, hidden_feats=(8,))
    # float64 numpy features and int32 numpy labels, as a user loads them from disk
    fit(model, path_graph(), x.double().numpy(), y.int().numpy(), TrainConfig(epochs=2, batch_size=16, progress=False))
    return model.eval(), x, y


def test_every_public_method_takes_what_users_hold(trained):
    model, x, y = trained
    g = path_graph()
    expected = model.log_prob(g, x, y)
    for features, labels in [(x.double(), y.int()), (x.numpy(), y.numpy().astype(np.int16)),
                             (x.tolist(), y.float().tolist())]:
        torch.testing.assert_close(model.log_prob(g, features, labels), expected)
        torch.testing.assert_close(model.predict_proba(g, features), model.predict_proba(g, x))
        assert model.in_uncertainty_set(g, features, labels).shape == y.shape[:1]
    assert model.log_prob(g, x.double(), y).dtype == model.dtype
    torch.manual_seed(1)
    from_list = model.sample(g, [0, 1, 0], n=3)
    torch.manual_seed(1)
    assert torch.equal(from_list, model.sample(g, torch.tensor([0, 1, 0]), n=3))
    torch.testing.assert_close(model.generate(g, model.encode(g, x)[0].detach().double().numpy()), x, atol=1e-4, rtol=0)


def test_conversions_refuse_in_one_line():
    with pytest.raises(ValueError, match="whole-number labels"):
        as_labels([0.5, 1.0], torch.device("cpu"))
    with pytest.raises(ValueError, match="whole-number labels"):
        as_labels(np.array([np.nan, 1.0]), torch.device("cpu"))
    with pytest.raises(TypeError, match="must be rectangular"):
        as_features([[1.0, 2.0], [3.0]], torch.float32, torch.device("cpu"))
    for junk in (["a", "b"], {"x": 1}, None):
        with pytest.raises(TypeError, match="must be a tensor, a NumPy array or nested lists of numbers"):
            as_features(junk, torch.float32, torch.device("cpu"))
    assert as_labels([1.0, 2.0], torch.device("cpu")).dtype == torch.int64
    assert as_features(np.ones(3, dtype=np.float16), torch.float64, torch.device("cpu")).dtype == torch.float64
