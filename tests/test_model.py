"""IGNN against brute-force Jacobians and Bayes' rule; checkpoints; bad input."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2

from dgl_iflow import IGNN
from dgl_iflow.checkpoints import atomic_save
from graphs import brute_force_jacobian, make_graph, path_graph


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def small_model(conv: str, **kwargs) -> IGNN:
    return IGNN(path_graph(), 2, 2, conv=conv, num_blocks=3, hidden_feats=(8, 8), sigma=0.7, **kwargs)


def flow_map(model: IGNN, graph):
    """``x -> F(x)`` on sample-first batches ``(N, V, d)``."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        return model.encode(graph, x, logdet=False)[0]
    return apply


@pytest.mark.parametrize("conv", ["l3", "cheb", "mlp"])
@pytest.mark.parametrize("options", [{}, {"graph_mean": True, "node_affine": True}])
def test_log_prob_matches_brute_force_jacobian(conv, options):
    model = small_model(conv, **options)
    with torch.no_grad():  # a node affine layer that is not the identity
        for name, param in model.named_parameters():
            if "log_scale" in name or "shift" in name:
                param.normal_(0.0, 0.3)
    graph = path_graph()
    x = torch.randn(4, 3, 2)
    y = torch.randint(0, 2, (4, 3))
    log_prob = model.log_prob(graph, x, y)
    assert log_prob.shape == (4,)
    jacobians = brute_force_jacobian(flow_map(model, graph), x, samples_first=True)
    assert jacobians.shape == (4, 6, 6)
    brute_logdet = torch.linalg.slogdet(jacobians).logabsdet
    h, logdet, _ = model.encode(graph, x)
    expected = model.latent.log_prob(h, y) + brute_logdet
    torch.testing.assert_close(logdet, brute_logdet, rtol=0, atol=1e-8)
    for b in range(4):
        assert torch.allclose(log_prob[b], expected[b], atol=1e-8)
        # One sample alone gives what it gives in the batch.
        assert torch.allclose(model.log_prob(graph, x[b:b + 1], y[b:b + 1])[0], expected[b], atol=1e-8)


def test_latent_log_prob_is_node_factorized_gaussian():
    model = small_model("l3")
    graph = path_graph()
    x = torch.randn(5, 3, 2)
    y = torch.randint(0, 2, (5, 3))
    h, logdet, transport = model.encode(graph, x, logdet=False)
    assert h.shape == (5, 3, 2) and logdet is None and transport.shape == (5,)
    means = model.latent.means[y]
    sigma = model.latent.sigma
    expected = (-0.5 * ((h - means) / sigma).pow(2) - torch.log(torch.tensor(sigma * (2 * torch.pi) ** 0.5))).sum(dim=(1, 2))
    assert torch.allclose(model.latent.log_prob(h, y), expected, atol=1e-10)


@pytest.mark.parametrize("conv", ["l3", "cheb", "mlp"])
def test_predict_proba_is_bayes_rule_in_the_latent(conv):
    model = small_model(conv)
    graph = path_graph()
    x = torch.randn(6, 3, 2)
    h = model.encode(graph, x, logdet=False)[0]
    log_lik = -0.5 * (h.unsqueeze(-2) - model.latent.means).pow(2).sum(-1) / model.latent.sigma ** 2
    expected = torch.softmax(log_lik + model.latent.log_priors, dim=-1)
    proba = model.predict_proba(graph, x)
    assert proba.shape == (6, 3, 2)
    assert torch.allclose(proba, expected, atol=1e-10)


@pytest.mark.parametrize("conv", ["l3", "cheb", "mlp"])
def test_sample_inverts_the_flow(conv):
    model = small_model(conv)
    graph = path_graph()
    torch.manual_seed(1)
    x = model.sample(graph, torch.tensor([0, 1, 0]), 50)
    assert x.shape == (50, 3, 2)
    torch.manual_seed(1)
    h = model.latent.sample(torch.tensor([0, 1, 0]), 50)
    assert h.shape == (50, 3, 2)
    assert torch.allclose(model.encode(graph, x, logdet=False)[0], h, atol=1e-6)


def test_node_uncertainty_sets_boundary_maps_to_latent_spheres():
    model = small_model("l3")
    graph = path_graph()
    y = torch.tensor([0, 1, 1])
    boundary = model.node_uncertainty_sets(graph, y, level=0.9, num_points=40)
    assert boundary.shape == (40, 3, 2)
    h = model.encode(graph, boundary, logdet=False)[0]
    radius = model.latent.node_confidence_radius(0.9)
    distance = (h - model.latent.means[y]).norm(dim=-1)
    assert distance.shape == (40, 3)
    assert torch.allclose(distance, torch.full_like(distance, radius), atol=1e-5)
    inside = model.in_node_uncertainty_sets(graph, model.sample(graph, y, 2000), y.expand(2000, -1), 0.9)
    assert inside.shape == (2000, 3) and inside.dtype == torch.bool
    assert abs(inside.double().mean().item() - 0.9) < 0.03


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_uncertainty_set_holds_its_level_of_the_models_own_samples(level):
    """The joint set holds ``level`` of whole samples (Monte Carlo within 3 binomial standard
    errors), where the product of the per-node sets holds far less; its boundary lies on the
    latent sphere of radius sqrt(chi2_{Vd}^{-1}(level))."""
    model = small_model("l3").double()
    graph = path_graph()
    y = torch.tensor([0, 1, 1])
    n = 4000
    torch.manual_seed(5)
    samples = model.sample(graph, y, n)
    inside = model.in_uncertainty_set(graph, samples, y.expand(n, -1), level)
    assert inside.shape == (n,) and inside.dtype == torch.bool
    assert abs(inside.double().mean().item() - level) < 3 * math.sqrt(level * (1 - level) / n)
    every_node = model.in_node_uncertainty_sets(graph, samples, y.expand(n, -1), level).all(dim=1)
    assert every_node.double().mean().item() < level - 0.05  # about level ** 3 for independent nodes
    boundary = model.uncertainty_set(graph, y, level=level, num_points=30, generator=torch.Generator().manual_seed(1))
    h = model.encode(graph, boundary, logdet=False)[0]
    distance = model.latent.whitened_distance(h, y)
    torch.testing.assert_close(distance, torch.full_like(distance, math.sqrt(chi2.ppf(level, 6))), atol=1e-6, rtol=0)


def test_mlp_baseline_mixes_all_nodes():
    """The graph-free flow sees all V*d features at once: node 0's latent depends on node 2."""
    model = small_model("mlp")
    graph = path_graph()
    jacobian = brute_force_jacobian(flow_map(model, graph), torch.randn(1, 3, 2), samples_first=True)[0]
    assert jacobian[0:2, 4:6].abs().max() > 1e-4


def test_save_load_restores_an_identical_model(tmp_path):
    model = small_model("l3", trainable_means=True)
    path = tmp_path / "model.pt"
    model.save(path)
    restored = IGNN.load(path)
    # Every tensor in the dtype it was saved in (LipSwish keeps its slope in float32 in a float64 model).
    assert {name: value.dtype for name, value in restored.state_dict().items() if isinstance(value, torch.Tensor)} \
        == {name: value.dtype for name, value in model.state_dict().items() if isinstance(value, torch.Tensor)}
    x = torch.randn(5, 3, 2)
    y = torch.randint(0, 2, (5, 3))
    assert torch.equal(model.log_prob(path_graph(), x, y), restored.log_prob(restored.graph, x, y))
    assert restored.config == model.config
    assert model.checkpoint()["structure"] == {}  # an IGNN's constructor rebuilds all of it


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"state_dict": {}, "version": 1}, path)
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"state_dict": {}, "version": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    small_model("l3").save(path)
    other = small_model("cheb")
    with pytest.raises(ValueError, match="another configuration.*conv"):
        other.load_weights(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a dgl_iflow checkpoint"):
        IGNN.load(tmp_path / "junk.pt")


def test_bad_input_gets_clear_errors():
    model = small_model("l3")
    graph = path_graph()
    x = torch.randn(4, 3, 2)
    y = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model.log_prob(graph, x, torch.full((4, 3), 2))
    with pytest.raises(ValueError, match=r"labels must have shape \(N, V\) = \(4, 3\)"):
        model.log_prob(graph, x, y[:3])
    with pytest.raises(ValueError, match=r"\(N, V, d\) = \(N, 3, 2\), got \(4, 4, 2\)"):
        model.log_prob(graph, torch.randn(4, 4, 2), y)
    with pytest.raises(ValueError, match=r"\(N, V, d\) = \(N, 3, 2\), got \(4, 3, 5\)"):
        model.log_prob(graph, torch.randn(4, 3, 5), y)
    with pytest.raises(ValueError, match=r"\(N, V, d\) = \(N, 3, 2\), got \(3, 4, 2\)"):
        model.encode(graph, torch.randn(3, 4, 2))  # the transforms' node-first layout
    with pytest.raises(ValueError, match=r"h must have shape \(N, V, d\)"):
        model.generate(graph, torch.randn(3, 4, 2))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.log_prob(graph, torch.full((4, 3, 2), float("nan")), y)
    with pytest.raises(ValueError, match="empty batch"):
        model.log_prob(graph, torch.randn(0, 3, 2), torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="graph of 3 nodes"):
        model.predict_proba(make_graph(([0], [1])), torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match=r"one label vector of shape \(3,\)"):
        model.sample(graph, torch.zeros(3, 2, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="conv must be one of"):
        IGNN(graph, 2, 2, conv="gat")


def test_min_separation_reaches_the_barrier():
    """The barrier keeps trainable means min_separation apart: zero-cost gap above it, a push below."""
    model = small_model("l3", trainable_means=True, min_separation=1.0, means=((0.5, 0.0), (-0.5, 0.0)))
    assert model.latent.separation == 1.0
    penalty = model.latent.barrier_penalty()
    penalty.backward()
    gap = model.latent.means.grad[0, 0] - model.latent.means.grad[1, 0]
    assert gap < 0  # descending the penalty moves mean 0 right and mean 1 left: apart
    far = small_model("l3", trainable_means=True, min_separation=1.0, means=((2.0, 0.0), (-2.0, 0.0)))
    assert far.latent.barrier_penalty() < penalty


def test_label_context_model_trains_predicts_and_saves(tmp_path):
    from dgl_iflow import TrainConfig, fit
    from graphs import toy_data

    x, y = toy_data(60)
    model = small_model("l3", label_context=True)
    fit(model, path_graph(), x, y, TrainConfig(epochs=2, batch_size=20, progress=False, inversion_check_samples=10))
    assert torch.equal(model.latent.label_vectors, torch.unique(y, dim=0))
    assert model.latent.context.abs().sum() > 0  # trained
    proba = model.predict_proba(path_graph(), x[:7])
    torch.testing.assert_close(proba.sum(-1), torch.ones(7, 3, dtype=proba.dtype))
    model.save(tmp_path / "model.pt")
    restored = IGNN.load(tmp_path / "model.pt")
    assert torch.equal(restored.latent.label_vectors, model.latent.label_vectors)
    torch.testing.assert_close(restored.predict_proba(restored.graph, x[:7]), proba, rtol=0, atol=0)
    generated = restored.sample(restored.graph, y[0], 4, generator=torch.Generator().manual_seed(0))
    assert generated.shape == (4, 3, 2)
