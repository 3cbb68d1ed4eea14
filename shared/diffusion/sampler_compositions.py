"""Sampler variants built from the plain samplers instead of flags inside them.

- ``at_low_temperature(sampler, noise_scale)``: every fresh draw of noise shrunk by ``noise_scale`` (one
  number, or one per channel of the last axis): low-temperature sampling, fidelity for diversity
  (RFdiffusion's and FrameDiff's ``noise_scale``; Watson et al. 2023, Yim et al. 2023). 1 is the sampler
  itself; 0 follows DDPM's posterior means.
- ``sample_repaint``: each ancestral step taken ``resample`` times, going back to t by the forward process
  q(x_t | x_s) in between (RePaint, Lugmayr et al. 2022, Alg. 1 with jump length 1): with an inpainting
  denoiser the generated part then harmonises with the known part.
- ``with_refinement(sampler, stages)``: the finished sample then pulled to a nearby mode by
  ``refine_to_mode`` stages [(steps, t), ...] in turn; e.g. [(40, 0.15), (10, 0.03)] is annealed (Song &
  Ermon 2019): first into a mode's basin of the more blurred density, then to its sharper position.

Each returns a sampler with the contract of ``shared.diffusion.samplers``; the sampler configs compose them
(``shared.cli.samplers``).
"""
from __future__ import annotations

import functools

import torch

from shared.diffusion.forward_process import renoise
from shared.diffusion.samplers import ancestral_step, denoise, refine_to_mode, run_grid
from shared.diffusion.spaces import EuclideanSpace


class TemperedSpace:
    """``space`` whose fresh noise is scaled by ``scale``; everything else is the space's own."""

    def __init__(self, space, scale: float | torch.Tensor):
        self.untempered, self.scale = space, scale

    def randn_like(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.scale * self.untempered.randn_like(x, generator)

    def __getattr__(self, name):
        return getattr(self.untempered, name)


def untempered(space):
    return getattr(space, "untempered", space)


def channel_scales(noise_scale, x: torch.Tensor) -> float | torch.Tensor:
    """A number as it is; a list as a tensor over the last axis of ``x`` (one scale per channel)."""
    if isinstance(noise_scale, (int, float)):
        return float(noise_scale)
    scales = [float(v) for v in noise_scale]
    if len(scales) != x.shape[-1]:
        raise ValueError(f"noise_scale {scales}: a list needs one scale per channel of the last axis, "
                         f"{x.shape[-1]} here")
    return torch.tensor(scales, dtype=x.dtype, device=x.device)


def at_low_temperature(sampler, noise_scale):
    @functools.wraps(sampler)
    def tempered(denoiser, x_T, schedule, steps, space=None, **kwargs):
        space = TemperedSpace(space or EuclideanSpace(), channel_scales(noise_scale, x_T))
        return sampler(denoiser, x_T, schedule, steps, space=space, **kwargs)

    return tempered


@torch.no_grad()
def sample_repaint(denoiser, x_T, schedule, steps=1000, space=None, generator=None, callback=None, cond=None,
                   resample: int = 2):
    """Ancestral sampling with every step taken ``resample`` times (RePaint resampling). The way back to t is
    the forward process at full temperature, whatever the steps' own temperature."""
    space = space or EuclideanSpace()
    move = ancestral_step(schedule, space, generator)

    def step(x, t, s, x0):
        for _ in range(resample - 1):
            x = renoise(schedule, move(x, t, s, x0), s, t, untempered(space), generator)
            x0 = denoise(denoiser, x, t, space, cond)
        return move(x, t, s, x0)

    return run_grid(step, denoiser, x_T, schedule, steps, space, cond, callback)


def with_refinement(sampler, stages: list[tuple[int, float]]):
    for steps, t in stages:
        if steps < 0 or (steps and not 0 < t < 1):
            raise ValueError(f"refinement stage ({steps} steps at t = {t}): steps >= 0 and t in (0, 1)")

    @functools.wraps(sampler)
    def refined(denoiser, x_T, schedule, steps, space=None, cond=None, **kwargs):
        x = sampler(denoiser, x_T, schedule, steps, space=space, cond=cond, **kwargs)
        for k, t in stages:
            x = refine_to_mode(denoiser, x, schedule, t, k, untempered(space or EuclideanSpace()), cond)
        return x

    return refined
