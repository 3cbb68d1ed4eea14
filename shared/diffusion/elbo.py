"""The evidence lower bound of a T-step diffusion model, as a Markovian hierarchical VAE.

−log p(x_0) ≤ −ELBO = L_rec + Σ_{i=2..T} L_i + L_prior on a grid t_1 < … < t_T = 1 (Luo 2022, eq. 58;
Kingma et al. 2021, VDM eq. 11-14), with the reverse step p(x_s | x_t) = q(x_s | x_t, x̂_0):
    L_i     = ½ (SNR(t_{i−1}) − SNR(t_i)) ‖x_0 − x̂_0(x_{t_i})‖²
    L_prior = KL(q(x_{t_T} | x_0) ‖ N(0, I))
    L_rec   = −log N(x_0; x̂_0(x_{t_1}), (σ_1/α_1)² I)
All terms count the space's degrees of freedom (so zero-centre-of-mass positions use (n − 1)·d).

Grids: 'uniform_t' (t_i = i/T) is exactly the T-step DDPM's bound. 'uniform_log_snr' spaces the
steps evenly in λ between t_min and 1; as T grows it converges to the continuous-time bound
½∫ e^λ E‖x_0 − x̂_0‖² dλ, which is tight for the exact denoiser (the I-MMSE identity), whereas on a
uniform-t grid the first steps' SNR ratios stay large for every T.
"""
from __future__ import annotations

import math

import torch

from shared.diffusion.forward_process import diffuse
from shared.diffusion.losses import LOG_SNR_LIMIT

MIN_GRID_LOG_SNR = -12.0
from shared.diffusion.spaces import EuclideanSpace


def _diffuse(schedule, x0, t, space, generator):
    return diffuse(schedule, x0, t, space.randn_like(x0, generator))


def _denoise_at(denoiser, x_t, t, cond):
    return denoiser(x_t, t.to(x_t.device).expand(x_t.shape[0]), cond).float()


def elbo_grid(schedule, steps: int, spacing: str = "uniform_t", t_min: float | None = None) -> torch.Tensor:
    """Increasing times t_1 < … < t_T = 1 of the hierarchical VAE."""
    if spacing == "uniform_t":
        return torch.arange(1, steps + 1, dtype=torch.float64) / steps
    if spacing == "uniform_log_snr":
        ends = schedule.log_snr(torch.tensor([t_min or 1e-3, 1.0], dtype=torch.float64))
        # below λ = −12 the diffusion integrand ½e^λ·mmse is < 1e-5: one final step to t = 1 covers it
        ends = ends.clamp(MIN_GRID_LOG_SNR, LOG_SNR_LIMIT)
        times = schedule.t_from_log_snr(torch.linspace(ends[0], ends[1], steps, dtype=torch.float64))
        times[-1] = 1.0
        return times
    raise ValueError(f"unknown ELBO grid spacing {spacing!r}: use 'uniform_t' or 'uniform_log_snr'")


@torch.no_grad()
def negative_elbo(denoiser, x0, num_steps: int | None = None, space=None, cond=None, generator=None,
                  num_time_samples: int | None = None, spacing: str = "uniform_t",
                  t_min: float | None = None) -> dict[str, torch.Tensor]:
    """Per-item −ELBO in nats, its three parts, and the degrees of freedom.

    ``num_time_samples=None`` sums all T − 1 diffusion terms; an integer draws that many steps
    uniformly and rescales (an unbiased Monte-Carlo estimate, as VDM trains).
    """
    schedule = denoiser.schedule
    space = space or EuclideanSpace()
    steps = num_steps or schedule.num_train_steps or 1000
    times = elbo_grid(schedule, steps, spacing, t_min)
    x0 = space.project(x0.float())
    dof = space.dof(x0)

    a1, s1 = schedule.alpha_sigma(times[0])
    x_hat = _denoise_at(denoiser, _diffuse(schedule, x0, times[0], space, generator), times[0], cond)
    decoder_var = (s1 / a1) ** 2
    squared_error = space.sum_per_item((x0 - x_hat) ** 2).double()
    reconstruction = 0.5 * dof * torch.log(2 * math.pi * decoder_var) + 0.5 * squared_error / decoder_var

    a_T, s_T = schedule.alpha_sigma(times[-1])
    norm_sq = space.sum_per_item(x0**2).double()
    prior = 0.5 * (dof * (s_T**2 - 1 - torch.log(s_T**2)) + a_T**2 * norm_sq)

    if num_time_samples is None:
        indices = torch.arange(1, steps)
    else:
        indices = torch.randint(1, steps, (num_time_samples,), generator=generator)
    snr = torch.exp(schedule.log_snr(times))
    diffusion = torch.zeros_like(prior)
    for i in indices.tolist():
        x_hat = _denoise_at(denoiser, _diffuse(schedule, x0, times[i], space, generator), times[i], cond)
        diffusion += 0.5 * (snr[i - 1] - snr[i]) * space.sum_per_item((x0 - x_hat) ** 2).double()
    diffusion *= (steps - 1) / len(indices)

    total = reconstruction + diffusion + prior
    return {"total": total, "reconstruction": reconstruction, "diffusion": diffusion, "prior": prior, "dof": dof}


def bits_per_dim(nll_nats: torch.Tensor, dof: torch.Tensor, bin_width: float | None = None) -> torch.Tensor:
    """Negative log-likelihood in bits per degree of freedom.

    With ``bin_width`` (e.g. 2/255 for 8-bit data scaled to [−1, 1]) the density is turned into the
    probability of the data's quantisation bin, the usual convention for image bits-per-dim.
    """
    nll = nll_nats - (dof * math.log(bin_width) if bin_width is not None else 0.0)
    return nll / (dof * math.log(2.0))
