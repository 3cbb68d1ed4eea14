"""Guidance as denoiser wrappers: each takes a denoiser and returns one with the same contract.

All wrappers act on the clean estimate x̂_0(x_t, t, cond); samplers never know they are there.
"""
from __future__ import annotations

import torch

from shared.diffusion.denoiser import broadcast_alpha_sigma
from shared.diffusion.forward_process import diffuse
from shared.diffusion.spaces import EuclideanSpace, quantile_per_item, std_per_item


def unguided(denoiser, **unused):
    """No guidance (the `guidance=none` option): the denoiser itself; ignores e.g. ``uncond``."""
    return denoiser


class ClassifierFreeGuidance:
    """x̂ = x̂_u + w (x̂_c − x̂_u) (Ho & Salimans 2022), optionally rescaled toward the conditional
    prediction's per-sample std by φ (Lin et al. 2024, §3.4), the std taken per item of ``space``.
    Scale 1 is the conditional denoiser."""

    def __init__(self, denoiser, scale: float, uncond, rescale: float = 0.0, space=None):
        self.denoiser, self.scale, self.uncond, self.rescale = denoiser, scale, uncond, rescale
        self.space = space or EuclideanSpace()
        self.schedule = getattr(denoiser, "schedule", None)

    def __call__(self, x_t, t, cond=None):
        conditional = self.denoiser(x_t, t, cond)
        if self.scale == 1.0:
            return conditional
        unconditional = self.denoiser(x_t, t, self.uncond)
        guided = unconditional + self.scale * (conditional - unconditional)
        if self.rescale > 0:
            factor = std_per_item(self.space, conditional) / std_per_item(self.space, guided).clamp(min=1e-12)
            guided = self.rescale * guided * factor + (1 - self.rescale) * guided
        return guided


class StaticThresholding:
    """Clip x̂_0 to the data range (Ho et al. 2020; diffusers' clip_sample)."""

    def __init__(self, denoiser, limit: float = 1.0):
        self.denoiser, self.limit = denoiser, limit
        self.schedule = getattr(denoiser, "schedule", None)

    def __call__(self, x_t, t, cond=None):
        return self.denoiser(x_t, t, cond).clamp(-self.limit, self.limit)


class DynamicThresholding:
    """s = max(1, p-th quantile of |x̂_0|) per item of ``space``; x̂_0 ← clip(x̂_0, −s, s)/s (Saharia et al.
    2022, Imagen)."""

    def __init__(self, denoiser, percentile: float = 0.995, max_value: float = 1.0, space=None):
        self.denoiser, self.percentile, self.max_value = denoiser, percentile, max_value
        self.space = space or EuclideanSpace()
        self.schedule = getattr(denoiser, "schedule", None)

    def __call__(self, x_t, t, cond=None):
        x0 = self.denoiser(x_t, t, cond)
        s = quantile_per_item(self.space, x0.abs(), self.percentile).clamp(min=self.max_value)
        return x0.clamp(-s, s) / s * self.max_value


class ClassifierGuidance:
    """ε̂ ← ε̂ − w σ_t ∇ log p(y | x_t) (Dhariwal & Nichol 2021), i.e. x̂_0 ← x̂_0 + w (σ_t²/α_t) ∇ log p(y | x_t).

    ``log_prob(x_t, t, cond) -> [items]`` is any differentiable log-probability (e.g. a noisy classifier).
    """

    def __init__(self, denoiser, log_prob, scale: float, schedule=None):
        self.denoiser, self.log_prob, self.scale = denoiser, log_prob, scale
        self.schedule = schedule or denoiser.schedule

    def __call__(self, x_t, t, cond=None):
        x0 = self.denoiser(x_t, t, cond)
        with torch.enable_grad():
            x = x_t.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x, t, cond).sum(), x)
        alpha, sigma = broadcast_alpha_sigma(self.schedule, t, x0)
        return x0 + self.scale * (sigma**2 / alpha) * grad


class ReconstructionGuidance:
    """x̃_0 = x̂_0 − (w α_t / 2) ∇_{x_t} ‖y − A(x̂_0(x_t))‖² for a known differentiable forward operator A
    (Ho et al. 2022, 'Video diffusion models', eq. 7; Chung et al. 2023, DPS)."""

    def __init__(self, denoiser, forward_operator, measurement, scale: float, schedule=None):
        self.denoiser, self.forward_operator, self.measurement = denoiser, forward_operator, measurement
        self.scale, self.schedule = scale, schedule or denoiser.schedule

    def __call__(self, x_t, t, cond=None):
        with torch.enable_grad():
            x = x_t.detach().float().requires_grad_(True)
            x0 = self.denoiser(x, t, cond)
            residual = (self.measurement - self.forward_operator(x0)) ** 2
            (grad,) = torch.autograd.grad(residual.sum(), x)
        alpha, _ = broadcast_alpha_sigma(self.schedule, t, x0)
        return x0.detach() - 0.5 * self.scale * alpha * grad


class Inpainting:
    """Known-part replacement (Song et al. 2021, App. I; Lugmayr et al. 2022 without resampling).

    The known region of x_t is replaced by a fresh sample of q(x_t | x_known) before denoising, and
    the known region of x̂_0 by x_known itself, so a sampler's final x̂_0 keeps it exactly.
    ``mask`` is 1 where x is known and broadcasts against x.
    """

    def __init__(self, denoiser, known: torch.Tensor, mask: torch.Tensor, schedule=None, space=None,
                 generator: torch.Generator | None = None):
        self.denoiser, self.known, self.mask = denoiser, known, mask.to(known.dtype)
        self.schedule, self.space = schedule or denoiser.schedule, space or EuclideanSpace()
        self.generator = generator

    def __call__(self, x_t, t, cond=None):
        noised_known = diffuse(self.schedule, self.known, t, self.space.randn_like(self.known, self.generator))
        x_t = self.mask * noised_known + (1 - self.mask) * x_t
        x0 = self.denoiser(x_t, t, cond)
        return self.mask * self.known + (1 - self.mask) * x0


def sdedit_start(x0: torch.Tensor, strength: float, schedule, steps: int, space=None, generator=None):
    """SDEdit (Meng et al. 2022): noise the input to t = strength, then denoise over the remaining grid.

    Returns (x_t, times) for any sampler: ``sampler(denoiser, x_t, schedule, times, ...)``. Strength 0
    returns the input unchanged with the one-point grid [0] (no steps).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"SDEdit strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return x0, torch.zeros(1, dtype=torch.float64)
    space = space or EuclideanSpace()
    times = schedule.sampling_times(max(1, round(steps * strength)), t_max=strength)
    return diffuse(schedule, x0, times[0], space.randn_like(x0, generator)), times
