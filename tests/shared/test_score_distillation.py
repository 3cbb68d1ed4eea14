"""Score distillation: the surrogate's gradient is exactly w(t)(ε̂ − ε); ε̂ from x̂₀ in closed form."""
import math

import pytest
import torch

from shared.diffusion.denoiser import Denoiser
from shared.diffusion.guidance import ClassifierFreeGuidance
from shared.diffusion.parameterization import VPrediction
from shared.diffusion.schedules import CosineSchedule, LinearSchedule
from shared.diffusion.score_distillation import TimeAnnealing, safe_gradient, sds_gradient, sds_loss, vsd_gradient


class FixedEstimate(torch.nn.Module):
    """A "denoiser" whose x̂₀ is always ``target`` (per conditioning: 0 → target, 1 → −target)."""

    def __init__(self, target, schedule):
        super().__init__()
        self.target, self.schedule = target, schedule

    def forward(self, x_t, t, cond=None):
        sign = 1.0 if cond is None else (1 - 2 * cond).view(-1, *[1] * (x_t.ndim - 1))
        return (sign * self.target).expand_as(x_t)


@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearSchedule()])
@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_gradient_is_the_closed_form(schedule, weighting):
    """x̂₀ = x* gives ε̂ − ε = α (z − x*) / σ, so SDS pulls z towards x* with weight w(t)·α/σ."""
    z, target = torch.randn(3, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t, noise = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), torch.randn(3, 4, 8, 8)
    g = sds_gradient(FixedEstimate(target, schedule), z, t, noise, weighting=weighting)
    alpha, sigma = (v.float().view(3, 1, 1, 1) for v in schedule.alpha_sigma(t))
    w = {"sds": sigma ** 2, "uniform": torch.ones_like(alpha), "fantasia3d": alpha * sigma}[weighting]
    assert torch.allclose(g, w * alpha / sigma * (z - target), rtol=1e-4, atol=1e-5)
    assert torch.allclose(w, {"sds": 1 - alpha ** 2, "uniform": torch.ones_like(alpha),
                              "fantasia3d": (alpha ** 2 * (1 - alpha ** 2)).sqrt()}[weighting], atol=1e-6)


def test_surrogate_gradient_equals_the_sds_gradient_exactly():
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    g = torch.randn(2, 4, 8, 8)
    sds_loss(z, g).backward()
    assert torch.allclose(z.grad, g / 2, rtol=0, atol=1e-6)   # z − (z − g) = g up to float rounding


def test_a_perfect_denoiser_gives_no_gradient_and_guidance_is_linear():
    schedule = CosineSchedule()
    z, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert torch.allclose(sds_gradient(FixedEstimate(z, schedule), z, t, noise), torch.zeros_like(z), atol=1e-5)
    # CFG on x̂₀ is CFG on ε̂: scale s gives ε̂_u + s (ε̂_c − ε̂_u)
    denoiser = FixedEstimate(torch.randn(1, 3, 4, 4), schedule)
    cond, uncond = torch.zeros(2), torch.ones(2)
    guided = ClassifierFreeGuidance(denoiser, 7.5, uncond)
    g_c, g_u = (sds_gradient(denoiser, z, t, noise, c) for c in (cond, uncond))
    assert torch.allclose(sds_gradient(guided, z, t, noise, cond), g_u + 7.5 * (g_c - g_u), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weighting", ["sds", "fantasia3d"])
def test_vsd_is_sds_with_the_particle_score_in_place_of_the_noise(weighting):
    """ProlificDreamer eq. 9: a particle whose x̂₀ is the clean z itself has ε̂_φ = ε (SDS exactly); a particle
    equal to the prior gives no gradient; a particle at x* pushes z away from it by w(t)·α/σ."""
    schedule = CosineSchedule()
    z, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0.2, 0.8], dtype=torch.float64)
    prior, elsewhere = FixedEstimate(torch.randn(1, 3, 4, 4), schedule), torch.randn(1, 3, 4, 4)
    sds = sds_gradient(prior, z, t, noise, weighting=weighting)
    assert torch.allclose(vsd_gradient(prior, FixedEstimate(z, schedule), z, t, noise, weighting=weighting), sds,
                          rtol=1e-4, atol=1e-4)
    assert torch.allclose(vsd_gradient(prior, prior, z, t, noise, weighting=weighting), torch.zeros_like(z), atol=1e-5)
    away = vsd_gradient(prior, FixedEstimate(elsewhere, schedule), z, t, noise, weighting=weighting)
    alpha, sigma = (v.float().view(2, 1, 1, 1) for v in schedule.alpha_sigma(t))
    w = {"sds": sigma ** 2, "fantasia3d": alpha * sigma}[weighting]
    assert torch.allclose(away - sds, w * alpha / sigma * (elsewhere - z), rtol=1e-3, atol=1e-4)


def test_a_real_denoiser_and_nan_safety():
    backbone = torch.nn.Conv2d(3, 3, 1)
    denoiser = Denoiser(lambda x, time, cond: backbone(x), CosineSchedule(), VPrediction())
    z, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.isfinite(sds_gradient(denoiser, z, torch.tensor([0.5, 0.5]), noise)).all()
    with torch.no_grad():
        backbone.bias.fill_(float("nan"))
    assert torch.equal(sds_gradient(denoiser, z, torch.tensor([0.5, 0.5]), noise), torch.zeros_like(z))
    with pytest.raises(ValueError, match="sds.weighting"):
        sds_gradient(denoiser, z, torch.tensor([0.5, 0.5]), noise, weighting="dreamtime")


def test_gradient_clipping_clamps_each_element():
    gradient = torch.tensor([-5.0, -0.5, 0.2, 3.0, float("inf"), float("nan")])
    assert torch.equal(safe_gradient(gradient, clip=1.0), torch.tensor([-1.0, -0.5, 0.2, 1.0, 0.0, 0.0]))
    assert torch.equal(safe_gradient(gradient)[:4], gradient[:4])
    z, noise, t = torch.zeros(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0.9, 0.9])
    far = FixedEstimate(torch.full_like(z, 100.0), CosineSchedule())
    assert sds_gradient(far, z, t, noise, clip=0.5).abs().max() == 0.5


def test_time_annealing():
    generator = torch.Generator().manual_seed(0)
    fixed = TimeAnnealing(0.02, 0.98)
    t = fixed(10_000, progress=0.7, generator=generator)
    assert 0.02 <= float(t.min()) and float(t.max()) <= 0.98 and abs(float(t.mean()) - 0.5) < 0.01
    linear, root = TimeAnnealing(0.02, 0.98, "linear", t_end=0.5), TimeAnnealing(0.02, 0.98, "sqrt", t_end=0.5)
    assert linear.upper(0.0) == pytest.approx(0.98) and linear.upper(1.0) == pytest.approx(0.5)
    assert linear.upper(0.25) == pytest.approx(0.98 - 0.48 * 0.25)
    assert root.upper(0.25) == pytest.approx(0.98 - 0.48 * math.sqrt(0.25))
    assert float(root(1000, 1.0, generator).max()) <= 0.5
    with pytest.raises(ValueError, match="sds.anneal"):
        TimeAnnealing(anneal="cosine")
