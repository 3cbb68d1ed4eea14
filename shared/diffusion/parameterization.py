"""What a backbone predicts, and the one place that converts between predictions.

With x_t = α x_0 + σ ε (α² + σ² = 1 for VP, kept general here):
    x_0 = (x_t − σ ε) / α,   ε = (x_t − α x_0) / σ,   v = α ε − σ x_0   (Salimans & Ho 2022),
    ∇ log p(x_t) = −ε / σ.
Every conversion takes α and σ already broadcast against x (see ``shared.diffusion.broadcast.append_dims``).
"""
from __future__ import annotations

import torch


def x0_from_eps(x_t, eps, alpha, sigma):
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t, x0, alpha, sigma):
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0, eps, alpha, sigma):
    return alpha * eps - sigma * x0


def x0_from_v(x_t, v, alpha, sigma):
    return (alpha * x_t - sigma * v) / (alpha**2 + sigma**2)


def eps_from_v(x_t, v, alpha, sigma):
    return (sigma * x_t + alpha * v) / (alpha**2 + sigma**2)


def score_from_eps(eps, sigma):
    return -eps / sigma


def eps_from_score(score, sigma):
    return -sigma * score


class Parameterization:
    """Maps a raw backbone output to x̂_0 and says what target the raw output regresses on.

    ``log_x0_weight`` is log w(λ) such that ‖raw − target‖² = w(λ) ‖x̂_0 − x_0‖²; losses use it to
    express any weighting in the native space of the backbone.
    """

    name: str

    def backbone_input(self, x_t, alpha, sigma):
        return x_t

    def backbone_time(self, schedule, t):
        return schedule.model_time(t)

    def to_x0(self, raw, x_t, alpha, sigma):
        raise NotImplementedError

    def target(self, x0, eps, alpha, sigma):
        raise NotImplementedError

    def log_x0_weight(self, log_snr):
        raise NotImplementedError


class EpsilonPrediction(Parameterization):
    """Predict the noise ε (Ho et al. 2020)."""

    name = "epsilon"

    def to_x0(self, raw, x_t, alpha, sigma):
        return x0_from_eps(x_t, raw, alpha, sigma)

    def target(self, x0, eps, alpha, sigma):
        return eps

    def log_x0_weight(self, log_snr):
        return log_snr  # ‖ε̂ − ε‖² = SNR ‖x̂_0 − x_0‖²


class SamplePrediction(Parameterization):
    """Predict x_0 directly."""

    name = "sample"

    def to_x0(self, raw, x_t, alpha, sigma):
        return raw

    def target(self, x0, eps, alpha, sigma):
        return x0

    def log_x0_weight(self, log_snr):
        return torch.zeros_like(log_snr)


class ResidualSamplePrediction(Parameterization):
    """Predict x_0 as a move of x_t: x̂_0 = x_t + c(σ)·F. For point sets the backbone then moves the noisy
    points to their denoised places (an EGNN's coordinate updates), the x̂₀-prediction that converges
    faster on molecules (Le et al. 2024, EQGAT-diff, §4).

    ``small_noise_sigma`` = σ₀ > 0 scales the move by c(σ) = σ/√(σ² + σ₀²) (EDM's c_out, Karras et al.
    2022, with c_skip = 1): about 1 where σ ≫ σ₀, σ/σ₀ near the data, where a network's absolute output
    error would otherwise exceed the noise it is meant to remove. σ₀ = 0 is the plain move (c = 1).
    F regresses (x_0 − x_t)/c, so ‖F − target‖² = ‖x̂_0 − x_0‖² / c². VP schedules (σ² = 1/(1 + SNR)).
    """

    name = "sample_residual"

    def __init__(self, small_noise_sigma: float = 0.0):
        if small_noise_sigma < 0:
            raise ValueError(f"parameterization.small_noise_sigma must be >= 0, got {small_noise_sigma}")
        self.small_noise_sigma = small_noise_sigma

    def _move_scale(self, sigma):
        return sigma / (sigma**2 + self.small_noise_sigma**2).sqrt() if self.small_noise_sigma else 1.0

    def to_x0(self, raw, x_t, alpha, sigma):
        return x_t + self._move_scale(sigma) * raw

    def target(self, x0, eps, alpha, sigma):
        return (x0 - (alpha * x0 + sigma * eps)) / self._move_scale(sigma)

    def log_x0_weight(self, log_snr):
        if not self.small_noise_sigma:
            return torch.zeros_like(log_snr)
        sigma_squared = torch.sigmoid(-log_snr)  # 1 / (1 + SNR)
        return torch.log1p(self.small_noise_sigma**2 / sigma_squared)  # −2 log c = log((σ² + σ₀²) / σ²)


class VPrediction(Parameterization):
    """Predict v = α ε − σ x_0 (Salimans & Ho 2022)."""

    name = "v_prediction"

    def to_x0(self, raw, x_t, alpha, sigma):
        return x0_from_v(x_t, raw, alpha, sigma)

    def target(self, x0, eps, alpha, sigma):
        return v_from_x0_eps(x0, eps, alpha, sigma)

    def log_x0_weight(self, log_snr):
        return torch.nn.functional.softplus(log_snr)  # SNR + 1 (VP)


class EDMPreconditioning(Parameterization):
    """D(x; σ) = c_skip x + c_out F(c_in x; c_noise) in VE coordinates (Karras et al. 2022, Table 1).

    The VP state x_t is first mapped to the VE state y = x_t / α with noise level s = σ / α.
    """

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def _coefficients(self, alpha, sigma):
        s, sd2 = sigma / alpha, self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1.0 / (s**2 + sd2).sqrt()
        return c_skip, c_out, c_in

    def backbone_input(self, x_t, alpha, sigma):
        return self._coefficients(alpha, sigma)[2] * (x_t / alpha)

    def backbone_time(self, schedule, t):
        return 0.25 * torch.log(schedule.ve_sigma(t))  # c_noise = ln(σ) / 4

    def to_x0(self, raw, x_t, alpha, sigma):
        c_skip, c_out, _ = self._coefficients(alpha, sigma)
        return c_skip * (x_t / alpha) + c_out * raw

    def target(self, x0, eps, alpha, sigma):
        c_skip, c_out, _ = self._coefficients(alpha, sigma)
        y = x0 + (sigma / alpha) * eps
        return (x0 - c_skip * y) / c_out

    def log_x0_weight(self, log_snr):
        # 1 / c_out² = (s² + σ_d²) / (s σ_d)² with s² = e^{−λ}
        s2, sd2 = torch.exp(-log_snr), self.sigma_data**2
        return torch.log((s2 + sd2) / (s2 * sd2))
