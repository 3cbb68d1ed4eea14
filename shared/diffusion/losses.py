"""Denoising score matching: E_t,ε [ w(λ_t) ‖x̂_0(x_t) − x_0‖² ], written in the backbone's native space.

Every weighting is expressed as an x_0-space weight w(λ) (Kingma & Gao 2023, "Understanding diffusion
objectives"); the loss divides by the weight the backbone's own target carries, so 'simple' is a unit
weight on whatever the backbone predicts. A time sampler chooses t; the space draws the noise.
"""
from __future__ import annotations

import math

import torch

from shared.diffusion.broadcast import append_dims
from shared.diffusion.draws import draw_rand, draw_randint, draw_randn
from shared.diffusion.forward_process import diffuse
from shared.diffusion.self_conditioning import training_estimate
from shared.diffusion.spaces import EuclideanSpace

LOG_SNR_LIMIT = 30.0  # keeps weights finite at the ᾱ = 0 / ᾱ = 1 ends (zero-terminal SNR)


class UniformTime:
    """t ~ U(0, 1]; on a discrete schedule, a uniform grid step t = (k + 1) / T (Ho et al. 2020)."""

    def __call__(self, n, schedule, generator=None, device=None):
        steps = schedule.num_train_steps
        if steps:
            k = draw_randint(0, steps, (n,), generator, device)
            return (k.to(torch.float64) + 1) / steps
        u = draw_rand(n, generator, device, torch.float64)
        return 1.0 - u  # (0, 1]


class LogNormalSigma:
    """ln σ_VE ~ N(P_mean, P_std²) (Karras et al. 2022, Table 1), mapped to t through the schedule."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, n, schedule, generator=None, device=None):
        z = draw_randn(n, generator, device, torch.float64)
        log_sigma = self.p_mean + self.p_std * z
        return schedule.t_from_log_snr(-2.0 * log_sigma).clamp(1e-6, 1.0)


class SimpleWeighting:
    """Unit weight on the backbone's own target (Ho et al. 2020's L_simple for ε-prediction)."""

    def log_weight(self, log_snr, t, schedule, parameterization):
        return parameterization.log_x0_weight(log_snr)


class MinSNRWeighting:
    """w = min(SNR, γ) in x_0 space (Hang et al. 2023, 'Min-SNR weighting strategy')."""

    def __init__(self, gamma: float = 5.0):
        self.gamma = gamma

    def log_weight(self, log_snr, t, schedule, parameterization):
        return torch.clamp(log_snr, max=math.log(self.gamma))


class ELBOWeighting:
    """w = −½ dλ/dt · SNR: the continuous-time ELBO for t ~ U(0, 1) (Kingma et al. 2021, VDM eq. 17)."""

    def log_weight(self, log_snr, t, schedule, parameterization):
        return torch.log(-0.5 * schedule.dlog_snr_dt(t)) + log_snr


class EDMWeighting:
    """λ(σ) = (σ² + σ_d²)/(σ σ_d)² (Karras et al. 2022, Table 1): unit weight on F with EDM preconditioning."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def log_weight(self, log_snr, t, schedule, parameterization):
        s2, sd2 = torch.exp(-log_snr), self.sigma_data**2
        return torch.log((s2 + sd2) / (s2 * sd2))


class DenoisingScoreMatching:
    """Per-element DSM loss; reduce it with ``mean_per_item``."""

    def __init__(self, weighting=None, time_sampler=None, self_conditioning_rate: float = 0.5,
                 input_perturbation: float = 0.0):
        if input_perturbation < 0:
            raise ValueError(f"loss.input_perturbation must be >= 0, got {input_perturbation}")
        self.weighting = weighting or SimpleWeighting()
        self.time_sampler = time_sampler or UniformTime()
        self.self_conditioning_rate = self_conditioning_rate  # used when the denoiser is self-conditioned
        self.input_perturbation = input_perturbation

    def __call__(self, denoiser, x0, cond=None, space=None, generator=None, t=None, noise=None, perturbation=None):
        """``t`` (per item), ``noise`` and ``perturbation`` (ξ) may be given, e.g. drawn for a global batch
        and sharded (``global_draws``)."""
        space = space or EuclideanSpace()
        schedule, parameterization = denoiser.schedule, denoiser.parameterization
        x0 = space.project(x0.float())
        if t is None:
            t = self.time_sampler(space.num_items(x0), schedule, generator, x0.device)
        eps = space.randn_like(x0, generator) if noise is None else space.project(noise.to(x0))
        t_rows = space.to_rows(t)
        eps = self._perturbed(eps, perturbation, space, generator)
        x_t = diffuse(schedule, x0, t_rows, eps)
        estimate = training_estimate(denoiser, x_t, t_rows, cond, self.self_conditioning_rate, generator)
        raw, alpha, sigma = denoiser.raw(x_t, t_rows, cond, estimate)
        target = parameterization.target(x0, eps, alpha, sigma)
        log_snr = schedule.log_snr(t_rows).clamp(-LOG_SNR_LIMIT, LOG_SNR_LIMIT)
        log_w = self.weighting.log_weight(log_snr, t_rows, schedule, parameterization)
        weight = torch.exp(log_w - parameterization.log_x0_weight(log_snr)).to(x0)
        # the prediction is projected like x̂_0 is in sampling (zero CoM, zero padding): only the
        # space's own degrees of freedom are learned
        return append_dims(weight, x0.ndim) * (space.project(raw) - target) ** 2

    def global_draws(self, random, x0) -> dict[str, torch.Tensor]:
        """ε, and ξ when ``input_perturbation`` > 0, drawn by the trainer's ``BatchRandomness`` for the
        global micro-batch (process-count invariance): keyword arguments for ``__call__``."""
        draws = {"noise": random.randn_like(x0)}
        if self.input_perturbation:
            draws["perturbation"] = random.randn_like(x0)
        return draws

    def _perturbed(self, eps, perturbation, space, generator):
        """ε + γξ: x_t carries more noise than t says, and the target is still the clean x_0, so the
        network learns to pull back inputs a little off the forward process, as its own samples are
        (exposure bias; after Ning et al. 2023, DDPM-IP, whose ε-target keeps ε without γξ)."""
        if not self.input_perturbation:
            return eps
        xi = space.randn_like(eps, generator) if perturbation is None else space.project(perturbation.to(eps))
        return eps + self.input_perturbation * xi


def mean_per_item(space, per_element: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Average a per-element loss over each item's degrees of freedom -> [num_items]."""
    return space.sum_per_item(per_element) / space.dof(x0).to(per_element)
