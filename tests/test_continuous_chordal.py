"""The continuous chordal data set's closed forms, and an IGNN of real-valued targets measured against them."""
import pytest
import torch

from dgl_iflow import IGNN
from dgl_iflow.data import load_dataset
from dgl_iflow.data.synthetic import (CONTINUOUS_CHORDAL_LOADING, chordal_mixing_operator,
                                      continuous_chordal_moments, continuous_chordal_posterior_mean,
                                      continuous_chordal_posterior_std)
from dgl_iflow.training import TrainConfig, fit

P = 11


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    """Frobenius norm of the difference over that of ``exact``."""
    return float((estimate.double() - exact).norm() / exact.norm())


def test_data_set_layout_and_seeding():
    data = load_dataset("continuous_chordal", p=P, n=50, seed=3)
    assert data.num_classes is None and data.y.dtype == torch.float32 and data.y.shape == (50, P)
    assert data.x.shape == (50, P, 2) and len(data.train_idx) + len(data.test_idx) == 50
    assert torch.equal(data.x, load_dataset("continuous_chordal", p=P, n=50, seed=3).x)
    assert "targets=real" in repr(data)
    with pytest.raises(ValueError, match="prime"):
        load_dataset("continuous_chordal", p=12)


def test_draws_given_one_target_vector_follow_the_exact_moments():
    # The data set's own sampler with every target pinned: X = M (B y + Z).
    y = torch.linspace(-2.0, 2.0, P, dtype=torch.float64)
    noise = torch.randn(20000, P, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loading = torch.tensor(CONTINUOUS_CHORDAL_LOADING, dtype=torch.float64)
    x = torch.einsum("vu,nud->nvd", chordal_mixing_operator(P), y[:, None] * loading + noise)
    mean, covariance = continuous_chordal_moments(P, y)
    # Relative sampling noise of the 22-dimensional covariance from 20000 draws is about 0.03.
    assert relative_error(x.mean(0), mean) < 0.02
    assert relative_error(x.flatten(1).T.cov(), covariance) < 0.05


def test_posterior_mean_is_gaussian_conditioning_of_the_joint_law():
    """E[Y | X] by the Schur complement of the dense joint Gaussian of (Y, vec X)."""
    prior_std = 1.3
    operator = chordal_mixing_operator(P)
    loading = torch.tensor(CONTINUOUS_CHORDAL_LOADING, dtype=torch.float64)
    gain = torch.kron(operator, loading[:, None])  # vec X = gain Y + (M kron I) Z
    noise = torch.kron(operator @ operator.T, torch.eye(2, dtype=torch.float64))
    cov_yx = prior_std**2 * gain.T
    cov_xx = prior_std**2 * gain @ gain.T + noise
    x = torch.randn(5, P, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    expected = (cov_yx @ torch.linalg.solve(cov_xx, x.flatten(1).T)).T
    torch.testing.assert_close(continuous_chordal_posterior_mean(P, x, prior_std), expected, rtol=0, atol=1e-10)
    posterior_cov = prior_std**2 * torch.eye(P, dtype=torch.float64) - cov_yx @ torch.linalg.solve(cov_xx, cov_yx.T)
    torch.testing.assert_close(posterior_cov.diagonal().sqrt(),
                               torch.full((P,), continuous_chordal_posterior_std(prior_std), dtype=torch.float64))


@pytest.mark.slow
def test_trained_ignn_reaches_the_exact_conditional_law_and_posterior():
    data = load_dataset("continuous_chordal", p=P, n=10000, seed=0)
    x_train, y_train = data.split("train")
    x_test, y_test = data.split("test")
    torch.manual_seed(0)
    model = IGNN(data.graph, 2, latent="linear_gaussian", num_blocks=4, hidden_feats=(32, 32), trainable_means=True)
    # No transport penalty: the test asks for the maximum-likelihood fit, which it would bias.
    fit(model, data.graph, x_train, y_train,
        TrainConfig(epochs=8, batch_size=200, lr=1e-2, transport_weight=0.0, progress=False))

    generator = torch.Generator().manual_seed(1)
    # A target vector drawn from the prior, and vectors at 2 and 2.5 prior standard deviations
    # on every node at once, far out in the training range's tails.
    for y in (y_test[0], torch.full((P,), 2.0), 2.0 * (-1.0) ** torch.arange(P), torch.full((P,), -2.5)):
        draws = model.sample(data.graph, y, 20000, generator=generator).double()
        mean, covariance = continuous_chordal_moments(P, y)
        # Measured 0.013 to 0.022 (mean) and 0.051 to 0.066 (covariance, with about 0.03 of
        # sampling noise of the 20000 draws).
        assert relative_error(draws.mean(0), mean) < 0.1
        assert relative_error(draws.flatten(1).T.cov(), covariance) < 0.1

    exact = continuous_chordal_posterior_mean(P, x_test)
    posterior_std = continuous_chordal_posterior_std()
    prediction = model.predict(data.graph, x_test).double()
    # Measured 0.014 (posterior_std is 0.316). A prediction off the exact posterior mean by
    # delta has RMSE sqrt(posterior_std^2 + delta^2) against the truth: delta = posterior_std / 6
    # costs at most 1.4 % of it.
    assert float((prediction - exact).pow(2).mean().sqrt()) < posterior_std / 6
    assert float((prediction - y_test).pow(2).mean().sqrt()) < 1.02 * float((exact - y_test).pow(2).mean().sqrt())
    lower, upper = model.predict_interval(data.graph, x_test, level=0.9)
    coverage = float(((y_test >= lower) & (y_test <= upper)).double().mean())  # measured 0.902
    assert abs(coverage - 0.9) < 0.02
