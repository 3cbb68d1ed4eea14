"""Samplers as the ``sampler/`` configs name them: the config's keys checked here, by name, and turned into a
composition of the core's plain samplers (``shared.diffusion.sampler_compositions``)."""
from __future__ import annotations

import functools
from collections.abc import Sequence

from shared.diffusion.sampler_compositions import at_low_temperature, sample_repaint, with_refinement
from shared.diffusion.samplers import sample_ddpm


def _is_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)  # a ListConfig is a Sequence too


def refinement_stages(steps, times) -> list[tuple[int, float]]:
    """``sampler.refine_steps`` / ``refine_time`` as [(steps, t), ...]: two numbers, two lists of one length,
    a list of steps at one time, or one number of steps at each listed time (so ``refine_steps=0`` turns a
    preset's stages off)."""
    steps_list = list(steps) if _is_list(steps) else [steps] * (len(times) if _is_list(times) else 1)
    times_list = list(times) if _is_list(times) else [times] * len(steps_list)
    if len(times_list) != len(steps_list):
        raise ValueError(f"sampler.refine_steps {steps_list} and sampler.refine_time {times_list} "
                         "need one time per stage")
    stages = []
    for k, t in zip(steps_list, times_list):
        if int(k) < 0:
            raise ValueError(f"sampler.refine_steps must be >= 0, got {k}")
        if k and not 0 < float(t) < 1:
            raise ValueError(f"sampler.refine_time must lie in (0, 1), got {float(t)}")
        if k:
            stages.append((int(k), float(t)))
    return stages


def ddpm(noise_scale=1.0, resample: int = 1, refine_steps=0, refine_time=0.1):
    """``sampler=ddpm`` / ``ddpm_low_temperature``: ancestral sampling, with RePaint resampling when
    ``resample`` > 1, at low temperature when ``noise_scale`` is not 1, then refinement stages if any."""
    if int(resample) < 1:
        raise ValueError(f"sampler.resample must be >= 1, got {resample}")
    if _is_list(noise_scale):
        noise_scale = [float(v) for v in noise_scale]
        if any(v < 0 for v in noise_scale):
            raise ValueError(f"sampler.noise_scale must be >= 0, got {noise_scale}")
    elif float(noise_scale) < 0:
        raise ValueError(f"sampler.noise_scale must be >= 0, got {noise_scale}")
    stages = refinement_stages(refine_steps, refine_time)
    sampler = functools.partial(sample_repaint, resample=int(resample)) if int(resample) > 1 else sample_ddpm
    if _is_list(noise_scale) or float(noise_scale) != 1.0:
        sampler = at_low_temperature(sampler, noise_scale)
    return with_refinement(sampler, stages) if stages else sampler

