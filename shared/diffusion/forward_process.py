"""The forward process q(x_t | x_0) = N(α_t x_0, σ_t² I), its posterior q(x_s | x_t, x_0) and its
transition q(x_t | x_s), s < t."""
from __future__ import annotations

import torch

from shared.diffusion.broadcast import append_dims


def diffuse(schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = α_t x_0 + σ_t ε, with ``t`` a scalar or one time per row of x_0."""
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = (append_dims(c.to(x0.device, x0.dtype), x0.ndim) for c in (alpha, sigma))
    return alpha * x0 + sigma * noise


def posterior(schedule, x_t: torch.Tensor, x0: torch.Tensor, t, s):
    """Mean and std of q(x_s | x_t, x_0) for scalar times s < t (Kingma et al. 2021, VDM eq. 26-28)."""
    (a_t, s_t), (a_s, s_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
    a_ts, var_ts = transition(schedule, t, s)
    mean = (a_ts * s_s**2 / s_t**2) * x_t + (a_s * var_ts / s_t**2) * x0
    std = (var_ts * s_s**2 / s_t**2).clamp(min=1e-20).sqrt()
    return mean, std


def transition(schedule, t, s):
    """α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α²_{t|s} σ_s² of q(x_t | x_s), scalar times s < t
    (VDM's q(z_t | z_s), Kingma et al. 2021)."""
    (a_t, s_t), (a_s, s_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
    a_ts = a_t / a_s
    return a_ts, s_t**2 - a_ts**2 * s_s**2


def renoise(schedule, x_s: torch.Tensor, s, t, space, generator=None) -> torch.Tensor:
    """A draw of q(x_t | x_s) = N(α_{t|s} x_s, σ²_{t|s} I) for scalar times s < t, ε drawn in ``space``."""
    a_ts, var_ts = transition(schedule, t, s)
    return a_ts.to(x_s) * x_s + var_ts.clamp(min=0).sqrt().to(x_s) * space.randn_like(x_s, generator)
