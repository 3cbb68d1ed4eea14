"""Samplers as pure functions ``(denoiser, x_T, schedule, steps, space, generator, callback) -> x_0``.

``steps`` is a number of steps (the schedule's default grid) or an explicit decreasing tensor of
times ending at 0. The move to t = 0 always returns the clean estimate x̂_0, so every sampler ends
on data even for schedules with ᾱ(0) < 1. Guidance is a denoiser wrapper; samplers never see it.
``callback`` receives a dict with ``step``, ``t``, ``x`` (after the step) and ``denoised``.
"""
from __future__ import annotations

from typing import Callable

import torch

from shared.diffusion.forward_process import posterior
from shared.diffusion.schedules import NoiseSchedule
from shared.diffusion.spaces import EuclideanSpace

Callback = Callable[[dict], None] | None


def time_grid(schedule: NoiseSchedule, steps) -> torch.Tensor:
    if isinstance(steps, int):
        return schedule.sampling_times(steps)
    times = torch.as_tensor(steps, dtype=torch.float64).flatten()
    if len(times) < 1 or times[-1] != 0 or (len(times) > 1 and not bool((times[1:] < times[:-1]).all())):
        raise ValueError("an explicit time grid must be strictly decreasing and end at t = 0")
    return times


def denoise(denoiser, x, t, space, cond):
    """x̂_0 at the scalar time t, projected onto the space."""
    return space.project(denoiser(x, t.to(x.device).expand(x.shape[0]), cond))


def _report(callback, step, t, x, x0):
    if callback is not None:
        callback({"step": step, "t": t, "x": x, "denoised": x0})


def run_grid(step_fn, denoiser, x, schedule, steps, space, cond, callback, perturb=None):
    """The loop every fixed-grid sampler shares: x ← step_fn(x, t, s, x̂_0(x, t)).

    ``perturb(x, t, num_steps) -> (x, t)`` may move the state to a noisier time first (EDM churn).
    """
    times = time_grid(schedule, steps)
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        if perturb is not None and s > 0:
            x, t = perturb(x, t, len(times) - 1)
        x0 = denoise(denoiser, x, t, space, cond)
        x = x0 if s == 0 else step_fn(x, t, s, x0)
        _report(callback, i, t, x, x0)
    return x


@torch.no_grad()
def refine_to_mode(denoiser, x, schedule, t, steps: int, space, cond=None):
    """``steps`` times x ← x̂_0(α_t x, t), the finished sample placed at noise level t without noise.

    By Tweedie x̂_0(x_t) = (x_t + σ_t² ∇log p_t(x_t))/α_t, so each is a step x ← x + (σ_t²/α_t) ∇log p_t(α_t x)
    of ascent on the data density blurred to level t: the Langevin corrector of predictor-corrector
    sampling (Song et al. 2021) at zero temperature. It pulls a sample to a nearby mode, at some cost in
    diversity.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    alpha = schedule.alpha(t).to(x)
    for _ in range(int(steps)):
        x = denoise(denoiser, alpha * x, t, space, cond)
    return x


def ancestral_step(schedule, space, generator):
    """x_s drawn from the posterior q(x_s | x_t, x̂_0) (Ho et al. 2020, eq. 6-7), noise drawn in ``space``."""
    def step(x, t, s, x0):
        mean, std = posterior(schedule, x, x0, t, s)
        return mean + std * space.randn_like(x, generator)

    return step


@torch.no_grad()
def sample_ddpm(denoiser, x_T, schedule, steps=1000, space=None, generator=None, callback=None, cond=None):
    """Ancestral sampling (Ho et al. 2020, Alg. 2). Low temperature, RePaint resampling and refinement to a
    mode are compositions of it: ``shared.diffusion.sampler_compositions``."""
    space = space or EuclideanSpace()
    return run_grid(ancestral_step(schedule, space, generator), denoiser, x_T, schedule, steps, space, cond, callback)


@torch.no_grad()
def sample_ddim(denoiser, x_T, schedule, steps=50, space=None, generator=None, callback=None, cond=None,
                eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12): η = 0 deterministic, η = 1 DDPM-like ancestral noise."""
    space = space or EuclideanSpace()

    def step(x, t, s, x0):
        (a_t, s_t), (a_s, s_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        eps = (x - a_t * x0) / s_t
        c = eta * ((s_s**2 / s_t**2) * (1 - a_t**2 / a_s**2)).clamp(min=0).sqrt()
        x = a_s * x0 + (s_s**2 - c**2).clamp(min=0).sqrt() * eps
        return x + c * space.randn_like(x, generator) if eta > 0 else x

    return run_grid(step, denoiser, x_T, schedule, steps, space, cond, callback)


def _churn(schedule, churn, space, generator):
    """EDM's stochastic churn (Karras et al. 2022, Alg. 2 lines 4-6): raise σ by γ, add fresh noise."""

    def perturb(x, t, num_steps):
        gamma = min(churn / num_steps, 2**0.5 - 1)
        sigma = schedule.ve_sigma(t)
        if gamma <= 0 or not torch.isfinite(sigma):
            return x, t
        t_hat = schedule.t_from_log_snr(-2 * torch.log(sigma * (1 + gamma)))
        sigma_hat = schedule.ve_sigma(t_hat)
        y = x / schedule.alpha(t) + (sigma_hat**2 - sigma**2).sqrt() * space.randn_like(x, generator)
        return schedule.alpha(t_hat) * y, t_hat

    return perturb if churn > 0 else None


@torch.no_grad()
def sample_euler(denoiser, x_T, schedule, steps=50, space=None, generator=None, callback=None, cond=None,
                 churn: float = 0.0):
    """Euler on the probability-flow ODE dy/dσ = (y − x̂_0)/σ, y = x/α (Karras et al. 2022, Alg. 2, 1st order).

    Written as x_s = α_s x̂_0 + σ_s ε̂, the same step, which stays finite at ᾱ_t = 0.
    ``churn`` > 0 adds EDM's stochastic noise injection before each step.
    """
    space = space or EuclideanSpace()

    def step(x, t, s, x0):
        (a_t, s_t), (a_s, s_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        return a_s * x0 + s_s * (x - a_t * x0) / s_t

    perturb = _churn(schedule, churn, space, generator)
    return run_grid(step, denoiser, x_T, schedule, steps, space, cond, callback, perturb)


@torch.no_grad()
def sample_heun(denoiser, x_T, schedule, steps=25, space=None, generator=None, callback=None, cond=None,
                churn: float = 0.0, max_ve_sigma: float = 1e3):
    """Heun's 2nd-order method on the PF-ODE (Karras et al. 2022, Alg. 1/2); Euler for the last step.

    The trapezoid in σ_VE is meaningless for a step that starts at σ_VE ≫ data scale (ᾱ ≈ 0, as the
    first step of cosine or zero-terminal-SNR grids); such steps, above ``max_ve_sigma``, are Euler
    steps (EDM itself starts at σ_max = 80).
    """
    space = space or EuclideanSpace()

    def step(x, t, s, x0):
        (a_t, s_t), (a_s, s_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        eps = (x - a_t * x0) / s_t
        x_euler = a_s * x0 + s_s * eps
        if not s_t < max_ve_sigma * a_t:
            return x_euler
        x0_s = denoise(denoiser, x_euler, s, space, cond)
        eps_s = (x_euler - a_s * x0_s) / s_s
        return x_euler + a_s * 0.5 * (s_s / a_s - s_t / a_t) * (eps_s - eps)

    perturb = _churn(schedule, churn, space, generator)
    return run_grid(step, denoiser, x_T, schedule, steps, space, cond, callback, perturb)


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x_T, schedule, steps=20, space=None, generator=None, callback=None, cond=None):
    """DPM-Solver++(2M), multistep data-prediction solver in λ = log(α/σ) (Lu et al. 2022, Alg. 2)."""
    space = space or EuclideanSpace()
    history = {}

    def step(x, t, s, x0):
        (a_t, s_t), (a_s, s_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        h = torch.log(a_s / s_s) - torch.log(a_t / s_t)
        d = x0
        if history:
            r = history["h"] / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * history["x0"]
        history.update(h=h, x0=x0)
        return (s_s / s_t) * x - a_s * torch.expm1(-h) * d

    return run_grid(step, denoiser, x_T, schedule, steps, space, cond, callback)
