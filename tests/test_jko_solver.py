"""Generation from a trained, stiff JKO flow: fixed-step RK4 misses, the adaptive solver does not."""
import pytest
import torch

from dgl_iflow import JKOConfig, JKOFlow, fit_jko
from dgl_iflow.data import load_dataset
from dgl_iflow.transforms import InversionError


@pytest.fixture(scope="module")
def eight_gaussians_flow():
    data = load_dataset("eight_gaussians", n=2000, seed=0)
    x_train, y_train = data.split("train")
    torch.manual_seed(0)
    model = JKOFlow(data.graph, data.num_features, data.num_classes, conv="mlp", hidden_feats=(32, 32))
    config = JKOConfig(iterations=60, batch_size=200, max_blocks=6, min_blocks=3, lr=2e-2, progress=False)
    fit_jko(model, data.graph, x_train, y_train, config)
    return model, data


def test_training_integrates_by_rk4_and_hands_back_the_adaptive_solver(eight_gaussians_flow):
    model, _ = eight_gaussians_flow
    assert model.solver == "dopri5" and all(block.solver == "dopri5" for block in model.blocks)


def test_adaptive_generation_meets_the_tolerance_where_rk4_does_not(eight_gaussians_flow):
    model, data = eight_gaussians_flow
    graph = data.graph
    x_test, y_test = data.split("test")
    x_test, labels = x_test[:200], y_test[0]
    latents = model.encode(graph, x_test, logdet=False)[0]
    model.set_solver("rk4")
    with pytest.raises(InversionError, match="misses the forward map"):
        model.generate(graph, latents)
    rk4_round_trip = float(model.round_trip_error(graph, x_test).max())
    model.set_solver("dopri5")
    model.generate(graph, latents)
    samples = model.sample(graph, labels, n=500, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(samples).all()
    assert max(block.last_inverse_error for block in model.blocks) <= model.inverse_tol
    dopri5_round_trip = float(model.round_trip_error(graph, x_test).max())
    # Measured: about 2e-4 against 1.3 (data within |x| <= 2.5).
    assert dopri5_round_trip * 100 < rk4_round_trip and dopri5_round_trip < 1e-3, (dopri5_round_trip, rk4_round_trip)


def test_stiffness_control_adds_rk4_steps_until_the_round_trip_is_met():
    data = load_dataset("eight_gaussians", n=600, seed=0)
    x_train, y_train = data.split("train")
    torch.manual_seed(0)
    model = JKOFlow(data.graph, data.num_features, data.num_classes, conv="mlp", hidden_feats=(16, 16))
    config = JKOConfig(iterations=20, batch_size=100, max_blocks=3, min_blocks=3, lr=2e-2, progress=False,
                       round_trip_tol=1e-4, max_steps=24)
    history = fit_jko(model, data.graph, x_train, y_train, config)
    model.set_solver("rk4")  # the training map, whose steps the control chose
    graph, cache = model.to_flow(data.graph, x_train[: config.check_samples])
    for index, (record, block) in enumerate(zip(history.records, model.blocks)):
        assert record.steps == block.steps and block.steps in (3, 6, 12, 24)
        assert float(block.round_trip_error(graph, cache, relative=True).max()) <= 1e-4 or block.steps == 24
        if index == 0 and block.steps > 3:  # the first block started at 3: half its steps did not suffice
            block.steps //= 2
            assert float(block.round_trip_error(graph, cache, relative=True).max()) > 1e-4
            block.steps *= 2
        cache, _ = block(graph, cache, logdet=False)
    assert max(record.steps for record in history.records) > 3  # the test exercises the control
