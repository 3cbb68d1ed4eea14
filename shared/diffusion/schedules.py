"""Noise schedules of the variance-preserving forward process q(x_t | x_0) = N(α_t x_0, σ_t² I).

A schedule is a value: pure functions of continuous time t ∈ [0, 1] (t = 0 is data, t = 1 is the
prior end) with α_t² + σ_t² = 1. Everything is evaluated in float64 and cast by the caller. VE
schedules (EDM) are expressed in VP form through σ_VE = σ_t / α_t, so samplers see one convention.
"""
from __future__ import annotations

import math

import torch

from shared.diffusion.broadcast import as_time


class NoiseSchedule:
    """Base class: subclasses define ``alpha_bar(t)`` (ᾱ_t = α_t²)."""

    #: number of steps of a discrete-time training grid (None: train at continuous t)
    num_train_steps: int | None = None

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.alpha_bar(as_time(t)).clamp(0.0, 1.0)
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def alpha(self, t) -> torch.Tensor:
        return self.alpha_sigma(t)[0]

    def sigma(self, t) -> torch.Tensor:
        return self.alpha_sigma(t)[1]

    def log_snr(self, t) -> torch.Tensor:
        """λ_t = log(α_t² / σ_t²)."""
        alpha_bar = self.alpha_bar(as_time(t)).clamp(0.0, 1.0)
        return alpha_bar.log() - torch.log1p(-alpha_bar)

    def ve_sigma(self, t) -> torch.Tensor:
        """σ_t / α_t: the noise level of the equivalent variance-exploding process x_t / α_t."""
        return torch.exp(-0.5 * self.log_snr(t))

    def dlog_snr_dt(self, t) -> torch.Tensor:
        """dλ/dt by automatic differentiation (used by the ELBO weighting)."""
        t = as_time(t).detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.log_snr(t).sum(), t)
        return grad

    def model_time(self, t) -> torch.Tensor:
        """The time value a backbone is conditioned on (1000·t; discrete schedules: grid index)."""
        return 1000.0 * as_time(t)

    def t_from_log_snr(self, log_snr: torch.Tensor, iterations: int = 64) -> torch.Tensor:
        """Invert λ(t) by bisection (λ is decreasing in t for every schedule here)."""
        target = as_time(log_snr)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            too_clean = self.log_snr(mid) > target
            lo, hi = torch.where(too_clean, mid, lo), torch.where(too_clean, hi, mid)
        return 0.5 * (lo + hi)

    def discrete_alpha_bar(self, num_steps: int) -> torch.Tensor:
        """ᾱ on the grid t_i = i / T, i = 1..T."""
        return self.alpha_bar(torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps)

    def betas(self, num_steps: int) -> torch.Tensor:
        """β_i = 1 − ᾱ_i / ᾱ_{i−1} of the T-step grid (ᾱ_0 = ᾱ(0))."""
        grid = torch.cat([self.alpha_bar(as_time([0.0])), self.discrete_alpha_bar(num_steps)])
        return 1.0 - grid[1:] / grid[:-1]

    def sampling_times(self, steps: int, t_max: float = 1.0) -> torch.Tensor:
        """Decreasing times t_max = t_0 > … > t_steps = 0 (uniform, 'trailing' spacing)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)


class DiscreteSchedule(NoiseSchedule):
    """A schedule given on T grid steps (DDPM, Ho et al. 2020); grid step k ↔ t = (k + 1) / T.

    Built from ᾱ_k directly (e.g. a pretrained diffusers scheduler's ``alphas_cumprod``) or with
    ``from_betas``.

    Between grid points α_t is linearly interpolated (with α_0 = 1), so continuous-time samplers and
    losses can use it; at grid points it is exact.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, zero_terminal_snr: bool = False):
        alpha = torch.as_tensor(alphas_cumprod, dtype=torch.float64).sqrt()
        if zero_terminal_snr:
            alpha = rescale_zero_terminal_snr(alpha, alpha[0], alpha[-1])
        self.num_train_steps = len(alpha)
        self._alpha_nodes = torch.cat([torch.ones(1, dtype=torch.float64), alpha])

    @classmethod
    def from_betas(cls, betas, zero_terminal_snr: bool = False) -> "DiscreteSchedule":
        return cls(torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), dim=0), zero_terminal_snr)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alpha_nodes[1:] ** 2

    def alpha_bar(self, t):
        t = as_time(t)
        position = t.clamp(0.0, 1.0) * self.num_train_steps
        left = position.floor().clamp(max=self.num_train_steps - 1)
        frac = position - left
        nodes = self._alpha_nodes.to(t.device)
        alpha = torch.lerp(nodes[left.long()], nodes[left.long() + 1], frac)
        return alpha**2

    def model_time(self, t):
        return as_time(t) * self.num_train_steps - 1.0

    def t_from_index(self, index) -> torch.Tensor:
        """Continuous time of diffusers-style timestep index k ∈ {0..T−1}."""
        return (as_time(index) + 1.0) / self.num_train_steps

    def sampling_times(self, steps: int, t_max: float = 1.0) -> torch.Tensor:
        """'Trailing' spacing snapped to the training grid (as diffusers' timestep_spacing='trailing')."""
        times = super().sampling_times(steps, t_max)
        snapped = torch.round(times * self.num_train_steps) / self.num_train_steps
        return torch.unique_consecutive(snapped)


class LinearSchedule(DiscreteSchedule):
    """DDPM linear betas β ∈ [1e-4, 0.02] over T = 1000 steps (Ho et al. 2020)."""

    def __init__(self, num_train_steps=1000, beta_start=1e-4, beta_end=0.02, zero_terminal_snr=False):
        betas = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
        super().__init__(torch.cumprod(1.0 - betas, dim=0), zero_terminal_snr)


class ScaledLinearSchedule(DiscreteSchedule):
    """Stable Diffusion's betas: linear in √β from √0.00085 to √0.012 (Rombach et al. 2022)."""

    def __init__(self, num_train_steps=1000, beta_start=0.00085, beta_end=0.012, zero_terminal_snr=False):
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_steps, dtype=torch.float64) ** 2
        super().__init__(torch.cumprod(1.0 - betas, dim=0), zero_terminal_snr)


class CosineSchedule(NoiseSchedule):
    """ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t + s)/(1 + s))  (Nichol & Dhariwal 2021, eq. 17)."""

    def __init__(self, s: float = 0.008):
        self.s = s

    def alpha_bar(self, t):
        f = lambda u: torch.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2  # noqa: E731
        return f(as_time(t)) / f(as_time(0.0))


class PolynomialSchedule(NoiseSchedule):
    """ᾱ(t) = (1 − 2s)(1 − t^p)² + s: the molecule schedule of EDM (Hoogeboom et al. 2022) / GeoLDM.

    The original also clips ᾱ_t/ᾱ_{t−1} ≥ 0.001 on its 1000-step grid; with the default precision
    s = 1e-5 that clip never binds, so the continuous form is used as is.
    """

    def __init__(self, power: float = 2.0, precision: float = 1e-5):
        self.power, self.precision = power, precision

    def alpha_bar(self, t):
        return (1 - 2 * self.precision) * (1 - as_time(t) ** self.power) ** 2 + self.precision


class SigmoidSchedule(NoiseSchedule):
    """ᾱ(t) from a shifted sigmoid, clipped at 1e-9 (Jabri et al. 2022; Chen 2023, Alg. 1)."""

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0, clip_min: float = 1e-9):
        self.start, self.end, self.tau, self.clip_min = start, end, tau, clip_min

    def alpha_bar(self, t):
        v_start = torch.sigmoid(as_time(self.start / self.tau))
        v_end = torch.sigmoid(as_time(self.end / self.tau))
        u = torch.sigmoid((as_time(t) * (self.end - self.start) + self.start) / self.tau)
        return ((v_end - u) / (v_end - v_start)).clamp(self.clip_min, 1.0)


class KarrasSchedule(NoiseSchedule):
    """EDM noise levels σ_VE(t) = σ_max · t^ρ (Karras et al. 2022); VP form ᾱ = 1 / (1 + σ_VE²).

    Uniform t ∈ [(σ_min/σ_max)^{1/ρ}, 1] is exactly EDM's ρ-spaced grid (eq. 5), followed by σ = 0.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def ve_sigma(self, t):
        return self.sigma_max * as_time(t) ** self.rho

    def alpha_bar(self, t):
        return 1.0 / (1.0 + self.ve_sigma(t) ** 2)

    def log_snr(self, t):
        return -2.0 * torch.log(self.ve_sigma(t))

    def sampling_times(self, steps: int, t_max: float = 1.0) -> torch.Tensor:
        t_min = (self.sigma_min / self.sigma_max) ** (1.0 / self.rho)
        if steps < 2 or t_max <= t_min:
            return super().sampling_times(steps, t_max)
        times = torch.linspace(t_max, t_min, steps, dtype=torch.float64)
        return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


class ZeroTerminalSNR(NoiseSchedule):
    """Rescale α_t so that ᾱ_1 = 0 exactly while α_0 is kept (Lin et al. 2024, Alg. 1).

    For discrete schedules use ``zero_terminal_snr(schedule)``, which rescales the grid itself.
    """

    def __init__(self, base: NoiseSchedule):
        self.base = base
        self.num_train_steps = base.num_train_steps

    def alpha_bar(self, t):
        alpha_first, alpha_last = self.base.alpha(0.0), self.base.alpha(1.0)
        alpha = rescale_zero_terminal_snr(self.base.alpha(t), alpha_first, alpha_last)
        return alpha**2

    def model_time(self, t):
        return self.base.model_time(t)

    def sampling_times(self, steps, t_max=1.0):
        return self.base.sampling_times(steps, t_max)


class ShiftedSchedule(NoiseSchedule):
    """Resolution shift: λ'(t) = λ(t) − 2 log(shift) (Hoogeboom et al. 2023, 'simple diffusion').

    shift = new_resolution / base_resolution > 1 makes every t noisier, as larger images need.
    ``time_of_noise_level``: the backbone is told the base schedule's time of the same noise level rather than
    t, so layers trained on the base schedule (a video model's frozen image layers) see only pairings of time
    and noise they know; the shift then only moves where training and sampling spend their steps (as SVD
    shifts its noise distribution while conditioning on σ).
    """

    def __init__(self, base: NoiseSchedule, shift: float, time_of_noise_level: bool = False):
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.base, self.shift, self.time_of_noise_level = base, shift, time_of_noise_level
        self.num_train_steps = base.num_train_steps

    def log_snr(self, t):
        return self.base.log_snr(t) - 2.0 * math.log(self.shift)

    def alpha_bar(self, t):
        return torch.sigmoid(self.log_snr(t))

    def model_time(self, t):
        if self.time_of_noise_level:
            return self.base.model_time(self.base.t_from_log_snr(self.log_snr(t)))
        return self.base.model_time(t)

    def sampling_times(self, steps, t_max=1.0):
        return self.base.sampling_times(steps, t_max)


def zero_terminal_snr(schedule: NoiseSchedule) -> NoiseSchedule:
    """The zero-terminal-SNR version of any schedule: grid rescaling for discrete ones (keeping the
    first grid step, as Lin et al.), the continuous wrapper otherwise."""
    if isinstance(schedule, DiscreteSchedule):
        return DiscreteSchedule(schedule.alphas_cumprod, zero_terminal_snr=True)
    return ZeroTerminalSNR(schedule)


def rescale_zero_terminal_snr(alpha, alpha_first, alpha_last):
    """Shift and scale α so the last value is 0 and the first is unchanged (Lin et al. 2024)."""
    return (alpha - alpha_last) * alpha_first / (alpha_first - alpha_last)
