"""Score distillation sampling (Poole et al. 2022, DreamFusion eq. 3):

    ∇_θ L_SDS = E_{t,ε}[ w(t) (ε̂_φ(z_t; y, t) − ε) ∂z/∂θ ],   z_t = α_t z + σ_t ε,

the denoiser's Jacobian skipped. z is whatever the frozen diffusion model sees (a rendered image's latent),
θ what renders it. ε̂ comes from any x̂₀ denoiser of the core (with its guidance) as ε̂ = (z_t − α_t x̂₀)/σ_t,
so every parameterisation and sampler-side guidance works unchanged. The same pull, written towards x̂₀, can
act on a decoded image instead of the latent (``x0_weight``). Variational score distillation (Wang et al. 2023,
ProlificDreamer eq. 9) replaces the injected noise ε by a second model's ε̂_φ, the score of what θ renders.
"""
from __future__ import annotations

import math

import torch

from shared.diffusion.broadcast import append_dims
from shared.diffusion.parameterization import eps_from_x0

# w(t) in terms of (α_t, σ_t); on a VP schedule 1 − ᾱ_t = σ_t², √ᾱ_t = α_t
WEIGHTINGS = {
    "sds": lambda alpha, sigma: sigma ** 2,            # DreamFusion: 1 − ᾱ_t
    "uniform": lambda alpha, sigma: torch.ones_like(alpha),
    "fantasia3d": lambda alpha, sigma: alpha * sigma,  # Fantasia3D: √ᾱ_t (1 − ᾱ_t)^½
}
ANNEALINGS = ("none", "linear", "sqrt")


class TimeAnnealing:
    """t ~ U[t_min, t_max] with the upper end brought down over training to ``t_end`` (DreamTime, HiFA):
    ``linear`` in the progress p ∈ [0, 1], ``sqrt`` as √p (HiFA: large noise early, detail late), ``none``
    keeps U[t_min, t_max] throughout."""

    def __init__(self, t_min: float = 0.02, t_max: float = 0.98, anneal: str = "none", t_end: float | None = None):
        if anneal not in ANNEALINGS:
            raise ValueError(f"sds.anneal must be one of {ANNEALINGS}, got {anneal!r}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"sds times need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max, self.anneal = t_min, t_max, anneal
        self.t_end = t_min if t_end is None else t_end

    def upper(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        shrink = {"none": 0.0, "linear": p, "sqrt": math.sqrt(p)}[self.anneal]
        return self.t_max - (self.t_max - max(self.t_end, self.t_min)) * shrink

    def __call__(self, n: int, progress: float, generator: torch.Generator | None = None) -> torch.Tensor:
        high = self.upper(progress)
        return self.t_min + (high - self.t_min) * torch.rand(n, generator=generator, dtype=torch.float64)


def sds_estimate(denoiser, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond=None):
    """(x̂₀(z_t; y, t), α_t, σ_t) for z_t = α_t z + σ_t ε, no graph; ``denoiser``: x̂₀ = denoiser(z_t, t, cond)
    (guided or not), with a ``schedule``. α, σ broadcast against z."""
    with torch.no_grad():
        alpha, sigma = denoiser.schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        alpha, sigma = (append_dims(v.to(z.device, torch.float32), z.ndim) for v in (alpha, sigma))
        z_t = alpha * z.detach().float() + sigma * noise
        return denoiser(z_t, t, cond).float(), alpha, sigma


def _weight(weighting: str, alpha, sigma):
    if weighting not in WEIGHTINGS:
        raise ValueError(f"sds.weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
    return WEIGHTINGS[weighting](alpha, sigma)


def sds_gradient(denoiser, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond=None,
                 weighting: str = "sds", clip: float | None = None) -> torch.Tensor:
    """w(t)(ε̂(z_t; y, t) − ε) per element, no graph, made safe by ``safe_gradient``."""
    x0, alpha, sigma = sds_estimate(denoiser, z, t, noise, cond)
    eps_hat = eps_from_x0(alpha * z.detach().float() + sigma * noise, x0, alpha, sigma)
    return safe_gradient(_weight(weighting, alpha, sigma) * (eps_hat - noise), clip)


def vsd_gradient(denoiser, particle, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond=None,
                 particle_cond=None, weighting: str = "sds", clip: float | None = None) -> torch.Tensor:
    """w(t)(ε̂(z_t; y, t) − ε̂_φ(z_t; y, t)) per element, no graph: ``particle`` (an x̂₀ denoiser with a
    ``schedule``, read at ``particle_cond``) in place of the noise that SDS subtracts."""
    x0, alpha, sigma = sds_estimate(denoiser, z, t, noise, cond)
    x0_particle, _, _ = sds_estimate(particle, z, t, noise, particle_cond)
    z_t = alpha * z.detach().float() + sigma * noise
    eps_hat, eps_particle = (eps_from_x0(z_t, x, alpha, sigma) for x in (x0, x0_particle))
    return safe_gradient(_weight(weighting, alpha, sigma) * (eps_hat - eps_particle), clip)


def safe_gradient(gradient: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """NaN/inf become 0 and, with ``clip``, every element is clamped to [−clip, clip] (threestudio's
    nan_to_num and ``grad_clip``: one bad render or one huge pull must not wreck the field)."""
    gradient = torch.nan_to_num(gradient, 0.0, 0.0, 0.0)
    return gradient if clip is None else gradient.clamp(-clip, clip)


def x0_weight(weighting: str, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """w(t)·α_t/σ_t: since ε̂ − ε = α_t (z − x̂₀)/σ_t, SDS pulls z towards x̂₀ with this weight. Applied to a
    decoded x̂₀ in image space it is HiFA's image-space SDS (Zhu et al. 2023), free of the encoder's Jacobian."""
    return _weight(weighting, alpha, sigma) * alpha / sigma


def sds_loss(z: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The stop-gradient surrogate ½‖z − sg(z − g)‖², summed per item and averaged over the batch: its
    gradient with respect to z is exactly g / batch (the "target trick" of threestudio and diffusers)."""
    target = (z - gradient).detach()
    return 0.5 * (z.float() - target).pow(2).flatten(1).sum(1).mean()
