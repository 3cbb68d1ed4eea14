"""q(x_t | x_0) and the posterior q(x_s | x_t, x_0), against Monte Carlo and Bayes' rule."""
import pytest
import torch

from shared.diffusion.forward_process import diffuse, posterior, renoise
from shared.diffusion.schedules import CosineSchedule, LinearSchedule, PolynomialSchedule
from shared.diffusion.spaces import EuclideanSpace

SCHEDULES = [LinearSchedule(), CosineSchedule(), PolynomialSchedule()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine", "polynomial"])
def test_forward_marginal_mean_and_variance(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[1.5, -0.5, 0.0]], dtype=torch.float64).expand(400_000, 3)
    t = torch.tensor(0.4, dtype=torch.float64)
    x_t = diffuse(schedule, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    alpha, sigma = schedule.alpha_sigma(t)
    # standard errors: σ/√n ≈ 1.5e-3 for the mean, ≈ 2e-3·σ² for the variance
    assert torch.allclose(x_t.mean(0), alpha * x0[0], atol=6e-3)
    assert torch.allclose(x_t.var(0), (sigma**2).expand(3), rtol=1e-2)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine", "polynomial"])
def test_posterior_is_bayes_rule(schedule):
    """q(x_s|x_t,x_0) ∝ q(x_t|x_s) q(x_s|x_0): product of two Gaussians, computed independently."""
    g = torch.Generator().manual_seed(1)
    x0, x_t = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    for t, s in [(0.9, 0.5), (0.3, 0.29), (0.05, 0.01)]:
        t, s = torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
        ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        transition_var = 1 - ab_t / ab_s          # q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s) x_s, 1 − ᾱ_t/ᾱ_s)
        precision = 1 / (1 - ab_s) + (ab_t / ab_s) / transition_var
        mean = (ab_s.sqrt() * x0 / (1 - ab_s) + (ab_t / ab_s).sqrt() * x_t / transition_var) / precision
        got_mean, got_std = posterior(schedule, x_t, x0, t, s)
        assert torch.allclose(got_mean, mean, rtol=1e-9, atol=1e-12)
        assert got_std.item() == pytest.approx(precision.rsqrt().item(), rel=1e-9)


def test_posterior_matches_monte_carlo_of_the_joint():
    """Sample x_s ~ q(x_s|x_0), x_t ~ q(x_t|x_s); the regression of x_s on x_t is the posterior."""
    schedule, g = CosineSchedule(), torch.Generator().manual_seed(2)
    t, s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    x0 = torch.full((300_000, 1), 0.8, dtype=torch.float64)
    x_s = diffuse(schedule, x0, s, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    a_ts = schedule.alpha(t) / schedule.alpha(s)
    x_t = a_ts * x_s + (1 - a_ts**2).sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    cov = torch.cov(torch.cat([x_s, x_t], 1).T)
    slope = cov[0, 1] / cov[1, 1]
    intercept = x_s.mean() - slope * x_t.mean()
    residual_std = (x_s - (intercept + slope * x_t)).std()
    mean_at_1, std = posterior(schedule, torch.ones(1, 1, dtype=torch.float64), x0[:1], t, s)
    mean_at_0, _ = posterior(schedule, torch.zeros(1, 1, dtype=torch.float64), x0[:1], t, s)
    assert (mean_at_1 - mean_at_0).item() == pytest.approx(slope.item(), abs=5e-3)
    assert mean_at_0.item() == pytest.approx(intercept.item(), abs=5e-3)
    assert std.item() == pytest.approx(residual_std.item(), rel=1e-2)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine", "polynomial"])
def test_renoise_from_s_gives_the_marginal_at_t(schedule):
    """x_s ~ q(x_s | x_0), then x_t ~ q(x_t | x_s): x_t ~ q(x_t | x_0) = N(α_t x_0, σ_t²)."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.tensor([[1.5, -0.5, 0.0]], dtype=torch.float64).expand(400_000, 3)
    s, t = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    x_s = diffuse(schedule, x0, s, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    x_t = renoise(schedule, x_s, s, t, EuclideanSpace(), g)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.allclose(x_t.mean(0), alpha * x0[0], atol=6e-3)
    assert torch.allclose(x_t.var(0), (sigma**2).expand(3), rtol=1e-2)
