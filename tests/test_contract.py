"""One contract, checked on every invertible transform, on both models and on every latent law, in float64.

Transforms: ``forward(graph, x, logdet=True) -> (y, ld)`` with ld = log|det dy/dx| per sample,
``inverse(graph, y, logdet=True) -> (x, ld)`` with ld = log|det dx/dy|. Models: sample-first
``(N, V, d)`` in and out, log-likelihood by the change of variables, save and load. Latent laws
(:data:`dgl_iflow.latents.LAWS`, each also after its fit after training): ``log_prob`` against a
dense Gaussian, sample moments, the posterior against Bayes' rule by enumeration, save and load.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable

import pytest
import torch

from dgl_iflow.graphs import Graph
from dgl_iflow import IGNN, JKOFlow
from dgl_iflow.latents import LAWS, LabelContextLatent, LatentLaw
from dgl_iflow.layers import ChebConv, L3Conv
from dgl_iflow.transforms import (
    FieldSpec, GraphFlow, GraphMeanLinear, GraphResidual, GraphTransform, InvertibleResBlock, JKOBlock, NodeAffine,
)
from graphs import brute_force_jacobian, cycle_graph

V, D, B = 4, 2, 3


def trained_like(transform: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Parameters moved off their initialization (zeros, identities), as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in transform.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return transform


def resblock(graph: Graph, conv: str, logdet: str = "exact") -> InvertibleResBlock:
    layer = L3Conv(D, 16, graph) if conv == "l3" else ChebConv(D, 16, k=3)
    residual = GraphResidual(layer, hidden_feats=(16,), lipschitz_coeff=0.9)
    return InvertibleResBlock(residual, logdet=logdet)


def ode_block(graph: Graph) -> JKOBlock:
    field = FieldSpec(feats=D, conv="l3", conv_feats=16, hidden_feats=(16,), graph=graph).build(output_scale=2.0)
    return trained_like(JKOBlock(field, 0.0, 0.5, steps=40, divergence="exact"))


# name -> (builder, tolerance of forward log-det against the brute-force Jacobian).
# The ODE block's log-det is the integrated divergence, exact for the ODE, O(S^-4) for RK4's map.
TRANSFORMS: dict[str, tuple[Callable[[Graph], GraphTransform], float]] = {
    "resblock-l3": (lambda g: resblock(g, "l3"), 1e-10),
    "resblock-cheb": (lambda g: resblock(g, "cheb"), 1e-10),
    "node-affine": (lambda g: trained_like(NodeAffine(V, D)), 1e-12),
    "graph-mean-linear": (lambda g: trained_like(GraphMeanLinear(D)), 1e-12),
    "ode-block": (ode_block, 1e-6),
    "flow": (lambda g: GraphFlow([trained_like(GraphMeanLinear(D)), resblock(g, "l3"),
                                  trained_like(NodeAffine(V, D)), ode_block(g)]), 1e-6),
}


def jacobian_logdet(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, samples_first: bool = False):
    """log|det| of the per-sample Jacobians of ``fn``, by autograd (:func:`graphs.brute_force_jacobian`)."""
    return torch.linalg.slogdet(brute_force_jacobian(fn, x, samples_first)).logabsdet


@pytest.fixture(params=sorted(TRANSFORMS))
def case(request):
    torch.manual_seed(0)
    graph = cycle_graph(V)
    builder, tolerance = TRANSFORMS[request.param]
    return graph, builder(graph).double().eval(), tolerance


def test_is_a_graph_transform(case):
    _, transform, _ = case
    assert isinstance(transform, GraphTransform)


def test_inverse_inverts_and_negates_the_logdet(case):
    graph, transform, _ = case
    x = torch.randn(V, B, D, dtype=torch.float64)
    y, logdet = transform(graph, x)
    back, inverse_logdet = transform.inverse(graph, y, logdet=True, tol=1e-12, max_iter=500)
    assert y.shape == x.shape and logdet.shape == (B,) and inverse_logdet.shape == (B,)
    assert (y - x).abs().max() > 1e-3  # not the identity, so the checks below mean something
    # The ODE block's backward RK4 map inverts its forward one up to O(S^-4).
    torch.testing.assert_close(back, x, rtol=0, atol=1e-7)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=0, atol=1e-6)
    assert transform(graph, x, logdet=False)[1] is None
    assert transform.inverse(graph, y, tol=1e-12, max_iter=500)[1] is None


def test_logdet_matches_brute_force_jacobian(case):
    graph, transform, tolerance = case
    x = torch.randn(V, B, D, dtype=torch.float64)
    _, logdet = transform(graph, x)
    expected = jacobian_logdet(lambda batch: transform(graph, batch, logdet=False)[0], x)
    assert expected.abs().min() > 1e-3
    torch.testing.assert_close(logdet, expected, rtol=0, atol=tolerance)


def test_gradients_reach_every_parameter(case):
    graph, transform, _ = case
    transform.train()
    y, logdet = transform(graph, torch.randn(V, B, D, dtype=torch.float64))
    (y.pow(2).sum() - logdet.sum()).backward()
    for name, parameter in transform.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


def test_state_dict_round_trip(case):
    graph, transform, _ = case
    restored = trained_like(copy.deepcopy(transform), seed=1)
    x = torch.randn(V, B, D, dtype=torch.float64)
    assert not torch.allclose(restored(graph, x)[0], transform(graph, x)[0])
    restored.load_state_dict(transform.state_dict())
    for got, want in zip(restored(graph, x), transform(graph, x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_input(case, dtype):
    graph, transform, _ = case
    transform = transform.to(dtype)
    y, logdet = transform(graph, torch.randn(V, B, D, dtype=dtype))
    back, _ = transform.inverse(graph, y, tol=1e-5)
    assert y.dtype == logdet.dtype == back.dtype == dtype


# -- both models -------------------------------------------------------------------

def trained_jko(graph: Graph, conv: str, num_classes: int | None = 2, **options) -> JKOFlow:
    # RK4: the adaptive solver's step size follows the whole batch, so its samples interact slightly
    # and a per-sample brute-force Jacobian would not apply.
    model = JKOFlow(graph, D, num_classes, conv=conv, hidden_feats=(16, 16), steps=40, solver="rk4", **options)
    for t0, t1 in ((0.0, 0.4), (0.4, 1.0)):
        model.blocks.append(trained_like(model.new_block(t0, t1)))
    return model


MODELS: dict[str, Callable[[Graph], torch.nn.Module]] = {
    "ignn-l3": lambda g: IGNN(g, D, 2, conv="l3", num_blocks=2, hidden_feats=(16, 16), node_affine=True,
                              lipschitz_coeff=0.9),
    "ignn-cheb": lambda g: IGNN(g, D, 2, conv="cheb", num_blocks=2, hidden_feats=(16, 16), lipschitz_coeff=0.9,
                                graph_mean_linear=True),
    "ignn-mlp": lambda g: IGNN(g, D, 2, conv="mlp", num_blocks=2, hidden_feats=(16, 16), node_affine=True,
                               lipschitz_coeff=0.9),
    "ignn-node": lambda g: IGNN(g, D, 2, conv="node", num_blocks=2, hidden_feats=(16, 16), lipschitz_coeff=0.9),
    "jko-l3": lambda g: trained_jko(g, "l3"),
    "jko-mlp": lambda g: trained_jko(g, "mlp"),
    "jko-node": lambda g: trained_jko(g, "node"),
    # Real-valued targets: the same contract through the law of targets.
    "jko-l3-targets": lambda g: trained_jko(g, "l3", None, latent="linear_gaussian"),
}


def random_labels(model: torch.nn.Module, n: int) -> torch.Tensor:
    """``(n, V)`` labels the model's law takes: classes in {0, 1}, or real-valued targets."""
    if model.continuous:
        return 2.0 * torch.randn(n, V, dtype=torch.float64)
    return torch.randint(0, 2, (n, V))


@pytest.fixture(params=sorted(MODELS))
def model_case(request):
    torch.manual_seed(0)
    graph = cycle_graph(V)
    model = MODELS[request.param](graph).double().eval()
    if isinstance(model, IGNN):
        trained_like(model.flow)
    return graph, model


def test_model_log_prob_is_the_change_of_variables(model_case):
    graph, model = model_case
    x = torch.randn(B, V, D, dtype=torch.float64)
    y = random_labels(model, B)
    log_px = model.log_prob(graph, x, y)
    h, _, _ = model.encode(graph, x, logdet=False)
    logdet = jacobian_logdet(lambda batch: model.encode(graph, batch, logdet=False)[0], x, samples_first=True)
    tolerance = 1e-6 if isinstance(model, JKOFlow) else 1e-9
    torch.testing.assert_close(log_px, model.latent.log_prob(h, y) + logdet, rtol=0, atol=tolerance)
    assert log_px.shape == (B,) and h.shape == x.shape


def test_model_samples_are_sample_first_and_encode_back(model_case):
    graph, model = model_case
    labels = torch.tensor([-1.5, 0.5, 3.0, 0.0], dtype=torch.float64) if model.continuous else torch.tensor([0, 1, 1, 0])
    generator = torch.Generator().manual_seed(3)
    samples = model.sample(graph, labels, n=5, generator=generator)
    assert samples.shape == (5, V, D) and samples.dtype == torch.float64
    h = model.latent.sample(labels, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.encode(graph, samples, logdet=False)[0], h, rtol=0, atol=1e-6)
    if model.continuous:
        assert model.predict(graph, samples).shape == (5, V)
    else:
        assert model.predict_proba(graph, samples).shape == (5, V, 2)
    assert model.round_trip_error(graph, samples).shape == (5,)


def test_model_gradients_reach_every_parameter(model_case):
    graph, model = model_case
    model.train()
    x = torch.randn(B, V, D, dtype=torch.float64)
    y = random_labels(model, B)
    (-model.log_prob(graph, x, y).sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


def test_model_save_and_load(model_case, tmp_path):
    graph, model = model_case
    path = tmp_path / "model.pt"
    x = torch.randn(B, V, D, dtype=torch.float64)
    y = random_labels(model, B)
    model.log_prob(graph, x, y)  # as after training: spectral normalization has its vectors
    model.save(path, note="kept")
    loaded = type(model).load(path).eval()  # in training mode the power iteration would advance
    assert loaded.dtype == torch.float64
    torch.testing.assert_close(loaded.log_prob(graph, x, y), model.log_prob(graph, x, y), rtol=0, atol=0)
    assert model.load_weights(path)["note"] == "kept"
    other = IGNN if isinstance(model, JKOFlow) else JKOFlow
    with pytest.raises(ValueError, match="checkpoint"):
        other.load(path)


def test_models_refuse_node_first_input(model_case):
    graph, model = model_case
    with pytest.raises(ValueError, match=r"\(N, V, d\)"):
        model.log_prob(graph, torch.randn(V, B + 2, D, dtype=torch.float64), torch.zeros(V, B + 2, dtype=torch.long))


def test_loading_keeps_the_random_stream_the_solver_and_checks_the_graph(model_case, tmp_path):
    graph, model = model_case
    if isinstance(model, JKOFlow):
        model.set_solver("dopri5")
        model.set_divergence("autograd")
    path = tmp_path / "model.pt"
    model.save(path)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    loaded = type(model).load(path)
    assert torch.equal(torch.rand(3), expected)
    if isinstance(model, JKOFlow):
        assert loaded.solver == "dopri5" and loaded.divergence == "autograd"
        assert all(block.solver == "dopri5" and block.divergence == "autograd" for block in loaded.blocks)
        loaded.blocks.append(loaded.new_block(1.0, 1.5))
        assert loaded.blocks[-1].solver == "dopri5" and loaded.blocks[-1].divergence == "autograd"
    with pytest.raises(ValueError, match="built for a graph of 4 nodes"):
        type(model).load(path, graph=cycle_graph(5))


def test_unconditional_jko_flow(tmp_path):
    torch.manual_seed(0)
    graph = cycle_graph(V)
    model = trained_jko(graph, "l3", num_classes=None).double().eval()
    x = torch.randn(B, V, D, dtype=torch.float64)
    log_px = model.log_prob(graph, x)
    h, _, _ = model.encode(graph, x, logdet=False)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(h).sum(dim=(-2, -1))
    logdet = jacobian_logdet(lambda batch: model.encode(graph, batch, logdet=False)[0], x, samples_first=True)
    torch.testing.assert_close(log_px, standard + logdet, rtol=0, atol=1e-6)
    samples = model.sample(graph, n=5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, V, D)
    with pytest.raises(ValueError, match="labels"):
        model.log_prob(graph, x, torch.zeros(B, V, dtype=torch.long))
    with pytest.raises(ValueError, match="no labels"):
        model.predict_proba(graph, x)
    model.save(tmp_path / "flow.pt")
    loaded = JKOFlow.load(tmp_path / "flow.pt").eval()
    torch.testing.assert_close(loaded.log_prob(graph, x), log_px, rtol=0, atol=0)


def test_latent_is_chosen_by_name_and_old_configs_load_with_the_default(tmp_path):
    graph = cycle_graph(V)
    by_flag = IGNN(graph, D, 2, num_blocks=1, hidden_feats=(8,), label_context=True)
    by_name = IGNN(graph, D, 2, num_blocks=1, hidden_feats=(8,), latent="label_context")
    assert type(by_flag.latent) is type(by_name.latent) is LabelContextLatent
    assert by_flag.config["label_context"] and by_flag.config["latent"] is None
    assert type(JKOFlow(graph, D, 2, hidden_feats=(8,), latent="label_context").latent) is LabelContextLatent
    with pytest.raises(ValueError, match="label_context=True builds"):
        IGNN(graph, D, 2, label_context=True, latent="node_gaussian")
    with pytest.raises(ValueError, match="latent must be one of"):
        IGNN(graph, D, 2, latent="nope")
    # A checkpoint written before `latent` existed has no such entry.
    checkpoint = copy.deepcopy(by_flag.checkpoint())
    del checkpoint["config"]["latent"]
    torch.save(checkpoint, tmp_path / "old.pt")
    loaded = IGNN.load(tmp_path / "old.pt")
    assert type(loaded.latent) is LabelContextLatent and loaded.config == by_flag.config
    by_flag.load_weights(tmp_path / "old.pt")


def test_config_records_every_constructor_argument():
    model = IGNN(cycle_graph(V), D, 2, num_blocks=1, hidden_feats=(8,), means=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    names = [name for name in inspect.signature(IGNN.__init__).parameters if name not in ("self", "graph")]
    assert list(model.config) == names
    assert model.config["hidden_feats"] == [8] and model.config["means"] == [[1.0, 0.0], [0.0, 1.0]]


# -- every latent law ------------------------------------------------------------------------

K, NODES = 3, 3
#: The training label vectors of the laws below, each seen a different number of times.
TRAIN_VECTORS = torch.tensor([[0, 1, 2], [1, 1, 0], [2, 0, 0], [0, 0, 0]])
TRAIN_LABELS = TRAIN_VECTORS.repeat_interleave(torch.tensor([30, 12, 5, 1]), dim=0)


def _law(name: str, after_training: bool) -> LatentLaw:
    """Law ``name`` in float64 with its parameters off their initialization, fitted as the trainers fit it."""
    generator = torch.Generator().manual_seed(1)
    law = LAWS[name](K, D, sigma=0.7, num_nodes=NODES, trainable_means=True, min_separation=0.1).double()
    trained_like(law)
    law.fit_before_training(TRAIN_LABELS)
    if after_training:
        # Latents with their own correlations, none of them the law's.
        mixing = torch.randn(NODES * D, NODES * D, generator=generator, dtype=torch.float64) * 0.3
        noise = torch.randn(len(TRAIN_LABELS), NODES * D, generator=generator, dtype=torch.float64) @ mixing
        with torch.no_grad():
            h = law.sample(TRAIN_LABELS, generator=generator) + noise.unflatten(-1, (NODES, D))
        law.fit_after_training(h, TRAIN_LABELS, generator=generator)
    return law


#: The laws of classes; the laws of real-valued targets have their own cases below.
LAW_CASES = {f"{name}{'+fitted' if fitted else ''}": (name, fitted) for name in LAWS if LAWS[name].discrete
             for fitted in (False, True)}


@pytest.fixture(params=sorted(LAW_CASES))
def law_case(request):
    torch.manual_seed(0)
    name, fitted = LAW_CASES[request.param]
    return name, fitted, _law(name, fitted)


def _reference(law: LatentLaw, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(V d,)`` and covariance ``(V d, V d)`` of ``H`` given one label vector ``y``, from the
    law's parameters by the formulas of its docstrings rather than by its methods."""
    mean = law.means[y].clone()
    if isinstance(law, LabelContextLatent):
        for u in range(NODES):
            if y[u] >= 1:
                mean = mean + law.context[u, y[u] - 1]
    covariance = law.sigma**2 * torch.eye(NODES * D, dtype=torch.float64)
    if law.joint_means is not None:
        match = (law.label_vectors == y).all(dim=1).nonzero().flatten()
        if len(match):
            chol = law.joint_chols[match[0]]
            return law.joint_means[match[0]], chol @ chol.T
    return mean.flatten(), covariance


def _all_vectors() -> torch.Tensor:
    return torch.cartesian_prod(*[torch.arange(K)] * NODES)


def test_law_log_prob_is_a_dense_gaussian(law_case):
    _, _, law = law_case
    for y in [*TRAIN_VECTORS, torch.tensor([2, 2, 1])]:  # seen in training, and not
        mean, covariance = _reference(law, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an unseen label vector under a fitted law
            h = law.sample(y, 4, generator=torch.Generator().manual_seed(2)) + 0.5
            dense = torch.distributions.MultivariateNormal(mean, covariance).log_prob(h.flatten(-2))
            torch.testing.assert_close(law.log_prob(h, y), dense.detach(), rtol=0, atol=1e-10)
            torch.testing.assert_close(law.centers(y).flatten(), mean.detach(), rtol=0, atol=1e-12)
            assert law.log_prob(h, y.expand(4, -1)).shape == (4,)


def test_law_sample_moments(law_case):
    _, _, law = law_case
    y = TRAIN_VECTORS[1]
    mean, covariance = _reference(law, y)
    draws = law.sample(y, 40000, generator=torch.Generator().manual_seed(4)).flatten(-2)
    assert draws.shape == (40000, NODES * D) and draws.dtype == torch.float64
    scale = covariance.diagonal().max().sqrt()
    torch.testing.assert_close(draws.mean(0), mean.detach(), rtol=0, atol=float(5 * scale / 200))
    torch.testing.assert_close(draws.T.cov(), covariance.detach(), rtol=0, atol=float(0.05 * scale**2))


def test_law_posterior_is_bayes_rule_by_enumeration(law_case):
    _, fitted, law = law_case
    h = law.sample(TRAIN_VECTORS[torch.tensor([0, 1, 2, 3, 0])], generator=torch.Generator().manual_seed(5))
    h = h + 0.3 * torch.randn(h.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    posterior = law.posterior(h)
    assert posterior.shape == (5, NODES, K) and posterior.dtype == torch.float64
    torch.testing.assert_close(posterior.sum(-1), torch.ones(5, NODES, dtype=torch.float64), rtol=0, atol=1e-12)
    if isinstance(law, LabelContextLatent) or fitted:
        # Prediction over the training set's label vectors, weighted by their frequencies.
        vectors, log_prior = law.label_vectors, law.label_log_weights
    else:
        vectors = _all_vectors()
        log_prior = law.log_priors[vectors].sum(-1)
    log_joint = torch.stack([torch.distributions.MultivariateNormal(*_reference(law, y)).log_prob(h.flatten(-2))
                             for y in vectors], -1) + log_prior  # (5, M)
    weights = torch.softmax(log_joint, -1)
    expected = torch.einsum("nm,mvk->nvk", weights, torch.nn.functional.one_hot(vectors, K).double())
    torch.testing.assert_close(posterior, expected.detach(), rtol=0, atol=1e-10)


def test_law_save_and_load(law_case):
    name, fitted, law = law_case
    fresh = LAWS[name](K, D, sigma=0.7, num_nodes=NODES, trainable_means=True, min_separation=0.1).double()
    fresh.load_state_dict(law.state_dict())
    assert list(fresh.state_dict()) == list(law.state_dict())
    h = law.sample(TRAIN_VECTORS, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(fresh.log_prob(h, TRAIN_VECTORS), law.log_prob(h, TRAIN_VECTORS), rtol=0, atol=0)
    torch.testing.assert_close(fresh.posterior(h), law.posterior(h), rtol=0, atol=0)
    again = fresh.sample(TRAIN_VECTORS[0], 3, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(again, law.sample(TRAIN_VECTORS[0], 3, generator=torch.Generator().manual_seed(8)))


def test_law_gradients_reach_the_latents_and_every_parameter(law_case):
    _, fitted, law = law_case
    h = law.sample(TRAIN_VECTORS, generator=torch.Generator().manual_seed(9)).detach().requires_grad_()
    law.log_prob(h, TRAIN_VECTORS).sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().max() > 0
    h.grad = None
    law.posterior(h)[..., 0].sum().backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().max() > 0
    # Labels never seen in training stay under the trained law, whose parameters all get gradients.
    unseen = torch.tensor([[2, 2, 1], [1, 2, 2]])
    law.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # drawn from the trained law: what is meant
        h = law.sample(unseen).detach()
    law.log_prob(h, unseen).sum().backward()
    for parameter_name, parameter in law.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, parameter_name


def test_law_float32_stays_float32(law_case):
    name, fitted, _ = law_case
    law = _law(name, fitted).float()
    h = law.sample(TRAIN_VECTORS, generator=torch.Generator().manual_seed(10))
    assert h.dtype == law.log_prob(h, TRAIN_VECTORS).dtype == law.posterior(h).dtype == torch.float32


def test_every_registered_law_is_a_latent_law():
    assert {name for name, _ in LAW_CASES.values()} | set(TARGET_LAW_CASES) == set(LAWS)
    assert all(issubclass(law, LatentLaw) for law in LAWS.values())


# -- every law of real-valued targets ---------------------------------------------------------

#: Each law of real-valued targets with one target per node and with two.
TARGET_LAW_CASES = {name: (None, 2) for name in LAWS if not LAWS[name].discrete}


@pytest.fixture(params=[(name, q) for name in sorted(TARGET_LAW_CASES) for q in TARGET_LAW_CASES[name]],
                ids=lambda case: f"{case[0]}-q{case[1]}")
def target_law(request):
    """The law in float64, trainable, moved off its initialization and fitted to training targets."""
    name, label_dim = request.param
    law = LAWS[name](D, NODES, label_dim=label_dim, sigma=0.7, trainable=True).double()
    trained_like(law)
    shape = (40, NODES) if label_dim is None else (40, NODES, label_dim)
    law.fit_before_training(torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    return law


def _targets(law: LatentLaw, n: int, seed: int) -> torch.Tensor:
    shape = (n, NODES) if law.label_dim is None else (n, NODES, law.label_dim)
    return 3 * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_target_law_log_prob_is_a_dense_gaussian(target_law):
    law = target_law
    assert not law.discrete and law.num_classes is None
    y = _targets(law, 3, 2)
    h = law.sample(y, generator=torch.Generator().manual_seed(3)) + 0.5
    for row in range(3):
        # Each law's own tests check its centers against their formula; here the density around them.
        mean = law.centers(y[row]).flatten()
        dense = torch.distributions.MultivariateNormal(mean, law.sigma**2 * torch.eye(NODES * D, dtype=torch.float64))
        torch.testing.assert_close(law.log_prob(h[row], y[row]), dense.log_prob(h[row].flatten()).detach(),
                                   rtol=0, atol=1e-10)


def test_target_law_save_load_gradients_and_dtype(target_law):
    law = target_law
    fresh = type(law)(D, NODES, label_dim=law.label_dim, sigma=0.7, trainable=True).double()
    fresh.load_state_dict(law.state_dict())
    y = _targets(law, 5, 4)
    h = law.sample(y, generator=torch.Generator().manual_seed(5)).detach().requires_grad_()
    torch.testing.assert_close(fresh.log_prob(h, y), law.log_prob(h, y), rtol=0, atol=0)
    torch.testing.assert_close(fresh.posterior_mean(h), law.posterior_mean(h), rtol=0, atol=0)
    law.log_prob(h, y).sum().backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().max() > 0
    for parameter_name, parameter in law.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, parameter_name
    single = law.float()
    h32 = single.sample(y[0].float(), 2)
    assert h32.dtype == single.log_prob(h32, y[0].float()).dtype == single.posterior_mean(h32).dtype == torch.float32
