"""Denoising score matching: each weighting is the formula it names, and training on it learns."""
import math

import pytest
import torch
from torch import nn

from shared.diffusion.denoiser import Denoiser
from shared.diffusion.losses import (DenoisingScoreMatching, EDMWeighting, ELBOWeighting, LogNormalSigma, MinSNRWeighting,
                           UniformTime, mean_per_item)
from shared.diffusion.parameterization import (EDMPreconditioning, EpsilonPrediction, ResidualSamplePrediction, SamplePrediction,
                                     VPrediction)
from shared.diffusion.samplers import sample_dpmpp_2m
from shared.diffusion.schedules import CosineSchedule, KarrasSchedule, LinearSchedule
from shared.diffusion.spaces import MaskedSetSpace


class Affine(nn.Module):
    """raw = a·x_in + b·time: simple enough that every prediction is checkable by hand."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(0.3)), nn.Parameter(torch.tensor(0.01))

    def forward(self, x, time, cond=None):
        return self.a * x + self.b * time.view(-1, *([1] * (x.ndim - 1)))


class FourierTimeMLP(nn.Module):
    """A small MLP on [x, sin/cos of the time at 16 frequencies] (raw time in one input learns poorly)."""

    def __init__(self, width=128):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0, 6, 16)))
        self.net = nn.Sequential(nn.Linear(2 + 32, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, time, cond=None):
        angles = time[:, None] / 1000 * self.frequencies
        return self.net(torch.cat([x, angles.sin(), angles.cos()], 1))


def _loss_and_manual(param, weighting, schedule=CosineSchedule()):
    torch.manual_seed(0)
    denoiser = Denoiser(Affine(), schedule, param)
    x0 = torch.randn(5, 3, 2)
    t = torch.tensor([0.05, 0.2, 0.5, 0.7, 0.9], dtype=torch.float64)
    if isinstance(schedule, KarrasSchedule):  # EDM's range σ ∈ [0.002, 80]
        t = 0.4 + 0.6 * t
    loss = DenoisingScoreMatching(weighting)(denoiser, x0, generator=torch.Generator().manual_seed(1), t=t)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    alpha, sigma = (c.float().view(-1, 1, 1) for c in schedule.alpha_sigma(t))
    x_t = alpha * x0 + sigma * eps
    x0_hat = denoiser(x_t, t)
    return loss, x0, eps, x0_hat, alpha, sigma, denoiser.raw(x_t, t)[0]


@pytest.mark.parametrize("param", [SamplePrediction(), ResidualSamplePrediction()], ids=["x0", "residual"])
def test_input_perturbation_noises_the_input_and_keeps_the_clean_target(param):
    """x_t = αx_0 + σ(ε + γξ) (ξ drawn after ε) is what the network sees; its x̂_0 is still held to x_0."""
    schedule, gamma = CosineSchedule(), 0.3
    denoiser = Denoiser(Affine(), schedule, param)
    x0 = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.05, 0.2, 0.5, 0.7, 0.9], dtype=torch.float64)
    loss = DenoisingScoreMatching(input_perturbation=gamma)(denoiser, x0, generator=torch.Generator().manual_seed(1), t=t)
    g = torch.Generator().manual_seed(1)
    eps, xi = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
    alpha, sigma = (c.float().view(-1, 1, 1) for c in schedule.alpha_sigma(t))
    x0_hat = denoiser(alpha * x0 + sigma * (eps + gamma * xi), t)
    torch.testing.assert_close(loss, (x0_hat - x0) ** 2)
    given = DenoisingScoreMatching(input_perturbation=gamma)(denoiser, x0, t=t, noise=eps, perturbation=xi)
    torch.testing.assert_close(given, loss)  # ξ drawn by the trainer for the global batch, as ε
    unperturbed = DenoisingScoreMatching()(denoiser, x0, generator=torch.Generator().manual_seed(1), t=t)
    assert not torch.allclose(unperturbed, loss)
    with pytest.raises(ValueError, match="input_perturbation"):
        DenoisingScoreMatching(input_perturbation=-0.1)


def test_simple_eps_loss_is_the_ddpm_objective():
    loss, x0, eps, _, _, _, raw = _loss_and_manual(EpsilonPrediction(), None)
    torch.testing.assert_close(loss, (raw - eps) ** 2)


def test_min_snr_weighting_in_eps_and_v_space():
    """Hang et al. 2023: ε-loss weight min(SNR, γ)/SNR; v-loss weight min(SNR, γ)/(SNR + 1)."""
    for param, denominator in [(EpsilonPrediction(), lambda snr: snr), (VPrediction(), lambda snr: snr + 1)]:
        loss, x0, eps, _, alpha, sigma, raw = _loss_and_manual(param, MinSNRWeighting(gamma=5.0))
        snr = alpha**2 / sigma**2
        target = eps if param.name == "epsilon" else alpha * eps - sigma * x0
        torch.testing.assert_close(loss, torch.clamp(snr, max=5.0) / denominator(snr) * (raw - target) ** 2)


def test_elbo_weighting_is_vdm_continuous_loss():
    """½ · (−dλ/dt) · SNR · ‖x̂_0 − x_0‖²: the same for every parameterisation."""
    schedule = CosineSchedule()
    t = torch.tensor([0.05, 0.2, 0.5, 0.7, 0.9], dtype=torch.float64)
    weight = (-0.5 * schedule.dlog_snr_dt(t) * torch.exp(schedule.log_snr(t))).float().view(-1, 1, 1)
    for param in [EpsilonPrediction(), SamplePrediction(), VPrediction()]:
        loss, x0, _, x0_hat, _, _, _ = _loss_and_manual(param, ELBOWeighting(), schedule)
        torch.testing.assert_close(loss, weight * (x0_hat - x0) ** 2, rtol=2e-4, atol=1e-6)


def test_edm_loss_with_preconditioning_is_unit_weight_on_f():
    loss, x0, eps, x0_hat, alpha, sigma, raw = _loss_and_manual(EDMPreconditioning(0.5), EDMWeighting(0.5),
                                                                KarrasSchedule())
    s = sigma / alpha
    weight = (s**2 + 0.25) / (s * 0.5) ** 2
    torch.testing.assert_close(loss, weight * (x0_hat - x0) ** 2, rtol=1e-4, atol=1e-6)


def test_time_samplers():
    g = torch.Generator().manual_seed(0)
    t = UniformTime()(10_000, LinearSchedule(), g)
    assert torch.equal(t * 1000, torch.round(t * 1000)) and t.min() >= 1e-3 and t.max() <= 1
    t = UniformTime()(10_000, CosineSchedule(), g)
    assert 0 < t.min() and t.max() <= 1 and abs(t.mean().item() - 0.5) < 0.01
    schedule = KarrasSchedule()
    log_sigma = torch.log(schedule.ve_sigma(LogNormalSigma(-1.2, 1.2)(20_000, schedule, g)))
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.03)


def test_masked_loss_ignores_padding():
    schedule = CosineSchedule()
    denoiser = Denoiser(Affine(), schedule, EpsilonPrediction())
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    space = MaskedSetSpace(mask)
    x0 = torch.randn(2, 3, 4)
    per_element = DenoisingScoreMatching()(denoiser, x0, space=space, generator=torch.Generator().manual_seed(0))
    assert torch.equal(per_element[0, 2], torch.zeros(4)) and torch.equal(per_element[1, 1:], torch.zeros(2, 4))
    per_item = mean_per_item(space, per_element, x0)
    torch.testing.assert_close(per_item, torch.stack([per_element[0, :2].mean(), per_element[1, :1].mean()]))


@pytest.mark.parametrize("param,schedule,weighting", [(EpsilonPrediction(), LinearSchedule(), None),
                                                      (VPrediction(), CosineSchedule(), MinSNRWeighting(5.0))],
                         ids=["epsilon-linear-simple", "v-cosine-minsnr"])
def test_training_on_gaussian_data_learns_it(param, schedule, weighting):
    """A small MLP trained with DSM: the loss on a fixed batch falls and samples get the data's statistics.

    (ε-prediction is paired with the linear schedule: at the continuous cosine schedule's α_1 ≈ 1e-16,
    x̂_0 = (x − σ ε̂)/α amplifies any ε error without bound — use v-prediction there.)"""
    torch.manual_seed(0)
    net = FourierTimeMLP()
    denoiser = Denoiser(net, schedule, param)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 1000)
    loss_fn, g = DenoisingScoreMatching(weighting), torch.Generator().manual_seed(0)
    data = lambda n: torch.tensor([1.0, -0.5]) + 0.5 * torch.randn(n, 2, generator=g)  # noqa: E731
    fixed_x0, fixed_t = data(4096), UniformTime()(4096, schedule, g)

    def fixed_batch_loss():
        with torch.no_grad():
            return loss_fn(denoiser, fixed_x0, generator=torch.Generator().manual_seed(9), t=fixed_t).mean().item()

    before = fixed_batch_loss()
    for _ in range(1000):
        loss = loss_fn(denoiser, data(512), generator=g).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_decay.step()
    after = fixed_batch_loss()
    assert math.isfinite(after) and after < 0.8 * before, (before, after)
    x = sample_dpmpp_2m(denoiser, torch.randn(4000, 2, generator=g), schedule, 20)
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -0.5]), atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.5, 0.5]), atol=0.05, rtol=0)
