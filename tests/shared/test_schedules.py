"""Closed forms of the noise schedules (the values a wrong sign or square root would break)."""
import math

import pytest
import torch

from shared.diffusion.schedules import (CosineSchedule, DiscreteSchedule, KarrasSchedule, LinearSchedule,
                              PolynomialSchedule, ScaledLinearSchedule, ShiftedSchedule, SigmoidSchedule,
                              ZeroTerminalSNR, zero_terminal_snr)

ALL = [LinearSchedule(), ScaledLinearSchedule(), CosineSchedule(), PolynomialSchedule(), SigmoidSchedule(),
       KarrasSchedule(), ZeroTerminalSNR(CosineSchedule()), LinearSchedule(zero_terminal_snr=True),
       ShiftedSchedule(CosineSchedule(), 2.0)]
IDS = ["linear", "scaled_linear", "cosine", "polynomial", "sigmoid", "karras", "zt_cosine", "zt_linear", "shifted"]


def test_linear_alpha_bar_is_the_product_of_one_minus_beta():
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    product = math.prod(1 - b for b in betas)
    schedule = LinearSchedule()
    assert schedule.alpha_bar(torch.tensor(1.0)).item() == pytest.approx(product, rel=1e-10)
    assert schedule.alpha_bar(schedule.t_from_index(499)).item() == pytest.approx(math.prod(1 - b for b in betas[:500]), rel=1e-10)
    assert torch.allclose(schedule.betas(1000), torch.tensor(betas, dtype=torch.float64), rtol=1e-8, atol=0)


def test_scaled_linear_matches_stable_diffusion_betas():
    schedule = ScaledLinearSchedule()
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(schedule.betas(1000), expected, rtol=1e-8)


def test_cosine_alpha_bar_matches_its_formula():
    s, schedule = 0.008, CosineSchedule()
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in [0.0, 0.1, 0.37, 0.5, 0.9, 0.999]:
        assert schedule.alpha_bar(torch.tensor(t, dtype=torch.float64)).item() == pytest.approx(f(t) / f(0.0), rel=1e-12, abs=1e-15)


def test_polynomial_and_karras_formulas():
    poly = PolynomialSchedule(power=2.0, precision=1e-5)
    assert poly.alpha_bar(torch.tensor(0.3, dtype=torch.float64)).item() == pytest.approx((1 - 2e-5) * (1 - 0.09) ** 2 + 1e-5, rel=1e-12)
    karras = KarrasSchedule(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    times = karras.sampling_times(18)
    i = torch.arange(18, dtype=torch.float64)
    edm_grid = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # Karras et al. eq. 5
    assert torch.allclose(karras.ve_sigma(times[:-1]), edm_grid, rtol=1e-10)
    assert times[-1] == 0


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_variance_preserving_and_monotone(schedule):
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    log_snr = schedule.log_snr(t[1:-1])
    assert bool((log_snr[1:] < log_snr[:-1]).all()), "log-SNR must strictly decrease in t"
    assert alpha[0] > 0.99


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_log_snr_inverse(schedule):
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.97], dtype=torch.float64)
    recovered = schedule.t_from_log_snr(schedule.log_snr(t))
    assert torch.allclose(schedule.log_snr(recovered), schedule.log_snr(t), rtol=1e-8, atol=1e-8)


def test_zero_terminal_snr():
    for schedule, base in [(LinearSchedule(zero_terminal_snr=True), LinearSchedule()),
                           (ZeroTerminalSNR(CosineSchedule()), CosineSchedule()),
                           (zero_terminal_snr(ScaledLinearSchedule()), ScaledLinearSchedule())]:
        assert schedule.alpha_bar(torch.tensor(1.0)).item() == 0.0
        first = 1 / schedule.num_train_steps if schedule.num_train_steps else 0.0
        first = torch.tensor(first, dtype=torch.float64)
        assert schedule.alpha_bar(first).item() == pytest.approx(base.alpha_bar(first).item(), rel=1e-12)
        t = torch.linspace(0, 0.999, 500, dtype=torch.float64)
        snr = torch.exp(schedule.log_snr(t))
        assert bool((snr[1:] < snr[:-1]).all()), "rescaling must keep the SNR ordering"
        assert bool((snr <= torch.exp(base.log_snr(t)) * (1 + 1e-9)).all()), "rescaling only lowers SNR"


def test_diffusers_zero_snr_rescale_matches():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        rescale_betas_zero_snr=True)
    ours = ScaledLinearSchedule(zero_terminal_snr=True)
    assert torch.allclose(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6)


def test_shift_lowers_log_snr_by_two_log_shift():
    base, shifted = CosineSchedule(), ShiftedSchedule(CosineSchedule(), 4.0)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(shifted.log_snr(t), base.log_snr(t) - 2 * math.log(4.0), atol=1e-12)


def test_discrete_grid_interpolates_and_snaps():
    schedule = LinearSchedule()
    assert schedule.model_time(schedule.t_from_index(torch.tensor(999))).item() == pytest.approx(999)
    times = schedule.sampling_times(20)
    assert torch.allclose(times * 1000 - 1, torch.tensor([999.0 - 50 * i for i in range(20)] + [-1.0], dtype=torch.float64))
    a, b = schedule.alpha(schedule.t_from_index(10)), schedule.alpha(schedule.t_from_index(11))
    assert schedule.alpha((schedule.t_from_index(10) + schedule.t_from_index(11)) / 2) == pytest.approx(((a + b) / 2).item())
    assert DiscreteSchedule(schedule.alphas_cumprod).alpha_bar(torch.tensor(0.5)) == schedule.alpha_bar(torch.tensor(0.5))


def test_dlog_snr_dt_matches_finite_difference():
    schedule = CosineSchedule()
    t = torch.tensor([0.2, 0.6], dtype=torch.float64)
    h = 1e-6
    numeric = (schedule.log_snr(t + h) - schedule.log_snr(t - h)) / (2 * h)
    assert torch.allclose(schedule.dlog_snr_dt(t), numeric, rtol=1e-6)


def test_a_shifted_schedule_can_tell_the_backbone_the_base_time_of_the_same_noise_level():
    """With time_of_noise_level the base schedule at the reported time has exactly the shifted log-SNR, so
    layers trained on the base schedule see noise levels paired with the times they learned them at."""
    base, t = CosineSchedule(), torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    shifted = ShiftedSchedule(base, 2.0, time_of_noise_level=True)
    reported = shifted.model_time(t) / 1000.0
    torch.testing.assert_close(base.log_snr(reported), shifted.log_snr(t), rtol=0, atol=1e-9)
    assert (reported > t).all()  # shift > 1: every t is noisier, so it reads as a later base time
    assert torch.equal(ShiftedSchedule(base, 2.0).model_time(t), base.model_time(t))
