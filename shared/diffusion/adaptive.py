"""Adaptive-step probability-flow ODE solver (Dormand–Prince 5(4), as score-SDE's RK45 sampler).

The PF-ODE of the VE state y = x/α in u = log σ_VE is dy/du = y − x̂_0 (Karras et al. 2022, eq. 4
with σ(t) = t), integrated from the grid's first noise level to its last non-zero one with
error-controlled steps; the final move to t = 0 returns x̂_0 as every sampler here does. The ODE runs
between σ_VE = ``sigma_max`` (or the grid's start, if lower) and ``sigma_min``: above σ_VE ≈ 10³ the
VP state is pure noise to float precision, and the last stretch below ``sigma_min`` is one x̂_0 jump.
"""
from __future__ import annotations

import math

import torch

from shared.diffusion.samplers import denoise, time_grid
from shared.diffusion.spaces import EuclideanSpace

# Dormand & Prince (1980) tableau: nodes c, stages a, 5th-order weights b, embedded 4th-order b_star.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_STAR = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


@torch.no_grad()
def sample_rk45(denoiser, x_T, schedule, steps=50, space=None, generator=None, callback=None, cond=None,
                rtol: float = 1e-4, atol: float = 1e-4, sigma_min: float = 1e-3, sigma_max: float = 1e3,
                max_evals: int = 2000):
    """Adaptive steps; ``steps`` only supplies the start time (its grid's first time, e.g. for SDEdit)."""
    space = space or EuclideanSpace()
    times = time_grid(schedule, steps)
    if len(times) < 2:
        return x_T
    u = torch.log(schedule.ve_sigma(times[0])).clamp(max=torch.log(torch.tensor(sigma_max, dtype=torch.float64)))
    t_start = schedule.t_from_log_snr(-2.0 * u)
    u_end = torch.log(schedule.ve_sigma(schedule.t_from_log_snr(torch.tensor(-2.0 * math.log(sigma_min)))))
    u_end = torch.minimum(u_end, u)

    def t_of(u_):
        return schedule.t_from_log_snr(-2.0 * u_)

    def velocity(u_, y):
        t = t_of(u_)
        alpha = schedule.alpha(t)
        return y - denoise(denoiser, alpha * y, t, space, cond)

    y = x_T / schedule.alpha(t_start)
    h = (u_end - u) / 100.0
    k1, evals, accepted = velocity(u, y), 1, 0
    while u > u_end and evals < max_evals:
        last = bool(h <= u_end - u)  # h < 0: u decreases toward u_end
        h = u_end - u if last else h
        stages = [k1]
        for c, row in zip(_C[1:], _A[1:]):
            y_stage = y + h * sum(a * k for a, k in zip(row, stages))
            stages.append(velocity(u + c * h, y_stage))
        evals += 6
        y_new = y + h * sum(b * k for b, k in zip(_B, stages))
        error = h * sum((b - bs) * k for b, bs, k in zip(_B, _B_STAR, stages))
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err_norm = (error / scale).pow(2).mean().sqrt().item()
        if err_norm <= 1.0:
            u, y, k1 = (u_end if last else u + h), y_new, stages[-1]  # FSAL: the last stage is the next step's first
            if callback is not None:
                callback({"step": accepted, "t": t_of(u), "x": schedule.alpha(t_of(u)) * y, "denoised": y - k1})
            accepted += 1
        factor = 5.0 if err_norm == 0 else min(5.0, max(0.2, 0.9 * err_norm ** -0.2))
        h = h * factor
    if evals >= max_evals:
        raise RuntimeError(f"sample_rk45 did not reach the final noise level within {max_evals} evaluations")
    t_final = t_of(u)
    return denoise(denoiser, schedule.alpha(t_final) * y, t_final, space, cond)
