"""Conversions between predictions are exact, and each parameterisation's loss weight is what it claims."""
import pytest
import torch

from shared.diffusion import parameterization as P
from shared.diffusion.schedules import CosineSchedule, KarrasSchedule

PARAMS = [P.EpsilonPrediction(), P.SamplePrediction(), P.ResidualSamplePrediction(),
          P.ResidualSamplePrediction(small_noise_sigma=0.1), P.VPrediction(),
          P.EDMPreconditioning(sigma_data=0.5)]


def _state(seed=0, schedule=CosineSchedule()):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(6, 3, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 0.99], dtype=torch.float64)
    if isinstance(schedule, KarrasSchedule):  # EDM's range σ ∈ [0.002, 80]
        t = 0.4 + 0.6 * t
    alpha, sigma = (c.view(-1, 1, 1) for c in schedule.alpha_sigma(t))
    return x0, eps, alpha, sigma, alpha * x0 + sigma * eps


def test_round_trips_are_exact():
    x0, eps, alpha, sigma, x_t = _state()
    v = P.v_from_x0_eps(x0, eps, alpha, sigma)
    torch.testing.assert_close(P.x0_from_eps(x_t, eps, alpha, sigma), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(P.eps_from_x0(x_t, x0, alpha, sigma), eps, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(P.x0_from_v(x_t, v, alpha, sigma), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(P.eps_from_v(x_t, v, alpha, sigma), eps, rtol=1e-12, atol=1e-12)
    score = P.score_from_eps(eps, sigma)
    torch.testing.assert_close(P.eps_from_score(score, sigma), eps, rtol=1e-12, atol=1e-12)
    # the score of q(x_t | x_0) is −(x_t − α x_0)/σ²
    torch.testing.assert_close(score, -(x_t - alpha * x0) / sigma**2, rtol=1e-12, atol=1e-10)


def test_round_trips_in_float32_are_exact_to_float_precision():
    x0, eps, alpha, sigma, x_t = (a.float() for a in _state(1))
    v = P.v_from_x0_eps(x0, eps, alpha, sigma)
    torch.testing.assert_close(P.x0_from_v(x_t, v, alpha, sigma), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(P.eps_from_v(x_t, v, alpha, sigma), eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_target_maps_back_to_x0(param):
    """A backbone that outputs the exact target gives the exact clean sample."""
    x0, eps, alpha, sigma, x_t = _state(2, KarrasSchedule() if param.name == "edm" else CosineSchedule())
    raw = param.target(x0, eps, alpha, sigma)
    torch.testing.assert_close(param.to_x0(raw, x_t, alpha, sigma), x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_log_x0_weight_is_the_native_to_x0_error_ratio(param):
    """‖raw' − target‖² = w(λ) ‖x̂_0' − x_0‖² for any perturbation of the raw output."""
    x0, eps, alpha, sigma, x_t = _state(3)
    target = param.target(x0, eps, alpha, sigma)
    delta = 1e-3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x0_err = param.to_x0(target + delta, x_t, alpha, sigma) - x0
    native = (delta**2).flatten(1).sum(1)
    log_snr = torch.log(alpha**2 / sigma**2).flatten()
    torch.testing.assert_close(native, torch.exp(param.log_x0_weight(log_snr)) * (x0_err**2).flatten(1).sum(1),
                               rtol=1e-8, atol=0)


def test_edm_preconditioning_coefficients():
    """c_skip, c_out, c_in, c_noise of Karras et al. 2022, Table 1, at σ_VE = 2."""
    edm, sd = P.EDMPreconditioning(0.5), 0.5
    s = torch.tensor(2.0, dtype=torch.float64)
    alpha, sigma = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    c_skip, c_out, c_in = edm._coefficients(alpha, sigma)
    assert c_skip.item() == pytest.approx(sd**2 / (4 + sd**2))
    assert c_out.item() == pytest.approx(2 * sd / (sd**2 + 4) ** 0.5)
    assert c_in.item() == pytest.approx(1 / (sd**2 + 4) ** 0.5)
    karras = KarrasSchedule()
    t = karras.t_from_log_snr(-2 * torch.log(s))
    assert edm.backbone_time(karras, t).item() == pytest.approx(0.25 * torch.log(s).item(), rel=1e-8)


def test_residual_move_scale_is_edm_c_out_with_unit_skip():
    """x̂_0 = x_t + σ/√(σ² + σ₀²)·F: an output error δ costs x̂_0 about δ·σ/σ₀ near the data, about δ far from it."""
    scaled, plain = P.ResidualSamplePrediction(small_noise_sigma=0.1), P.ResidualSamplePrediction()
    x_t, delta = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    for sigma, scale in [(0.01, 0.0995037), (0.1, 0.7071068), (0.9, 0.9938837)]:
        sigma = torch.tensor(sigma, dtype=torch.float64)
        alpha = (1 - sigma**2).sqrt()
        torch.testing.assert_close(scaled.to_x0(delta, x_t, alpha, sigma), scale * delta, rtol=1e-6, atol=0)
        torch.testing.assert_close(plain.to_x0(delta, x_t, alpha, sigma), delta)
    with pytest.raises(ValueError, match="small_noise_sigma"):
        P.ResidualSamplePrediction(small_noise_sigma=-1.0)
