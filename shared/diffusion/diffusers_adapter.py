"""Run any diffusers scheduler through the sampler contract.

The scheduler steps the state; our denoiser supplies x̂_0, converted to the scheduler's
``prediction_type``. The noise level of each model call is read back from the scheduler itself
(α from ``alphas_cumprod``, or from ``sigmas`` for the Karras-style schedulers) and mapped to our
continuous time by inverting the schedule's log-SNR, so the two agree whatever spacing it uses.
"""
from __future__ import annotations

import importlib
import inspect

import torch

from shared.diffusion.denoiser import broadcast_alpha_sigma
from shared.diffusion.draws import ItemGenerators
from shared.diffusion.parameterization import eps_from_x0, v_from_x0_eps
from shared.diffusion.schedules import NoiseSchedule
from shared.diffusion.spaces import EuclideanSpace


def make_scheduler(name: str, schedule: NoiseSchedule, num_train_steps: int = 1000, **config):
    """A diffusers scheduler (class name, e.g. 'DDIMScheduler') trained on our schedule's betas.

    Betas are capped at 0.999 as diffusers does for continuous schedules (a β of 1 at the ᾱ = 0 end
    would make its σ infinite); the adapter reads each call's noise level back, so this stays exact.
    """
    cls = getattr(importlib.import_module("diffusers"), name)
    steps = schedule.num_train_steps or num_train_steps
    config.setdefault("prediction_type", "epsilon")
    if "clip_sample" in inspect.signature(cls.__init__).parameters:
        config.setdefault("clip_sample", False)  # clipping is a guidance wrapper here
    return cls(num_train_timesteps=steps, trained_betas=schedule.betas(steps).clamp(max=0.999).float().numpy(), **config)


def _log_snr_of_call(scheduler, index: int, timestep) -> torch.Tensor:
    sigmas = getattr(scheduler, "sigmas", None)  # σ_VE of call `index` (Euler, Heun, DPM-Solver, ...)
    if sigmas is not None and len(sigmas) > index:
        return -2.0 * torch.log(torch.as_tensor(sigmas[index], dtype=torch.float64))
    alpha_bar = torch.as_tensor(scheduler.alphas_cumprod[int(timestep)], dtype=torch.float64)
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def _as_prediction(prediction_type: str, x0, x_t, alpha, sigma):
    if prediction_type == "sample":
        return x0
    eps = eps_from_x0(x_t, x0, alpha, sigma)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    raise ValueError(f"unsupported diffusers prediction_type {prediction_type!r}")


@torch.no_grad()
def sample_diffusers(denoiser, x_T, schedule, steps=20, space=None, generator=None, callback=None, cond=None,
                     scheduler=None, scheduler_name: str = "DPMSolverMultistepScheduler",
                     scheduler_config: dict | None = None, **step_kwargs):
    """``scheduler`` (an instance) or ``scheduler_name`` + ``scheduler_config`` (built with
    ``make_scheduler``) drives the loop; ``step_kwargs`` go to ``scheduler.step`` (e.g. ``eta``)."""
    space = space or EuclideanSpace()
    scheduler = scheduler or make_scheduler(scheduler_name, schedule, **(scheduler_config or {}))
    scheduler.set_timesteps(steps, device=x_T.device)
    # our x_T is the VP state; VE-state schedulers (Euler, Heun, ...) hold x/α, so divide by their
    # first input scaling rather than multiplying by init_noise_sigma (σ_max, not √(σ_max² + 1))
    input_scale = scheduler.scale_model_input(torch.ones((), device=x_T.device), scheduler.timesteps[0])
    x = x_T / input_scale
    if isinstance(generator, ItemGenerators):  # diffusers draws item by item from a list of generators
        generator = generator.generators
    for i, timestep in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, timestep)
        t = schedule.t_from_log_snr(_log_snr_of_call(scheduler, i, timestep)).to(x.device)
        x0 = space.project(denoiser(x_in, t.expand(x.shape[0]), cond))
        alpha, sigma = broadcast_alpha_sigma(schedule, t.expand(x.shape[0]), x_in)
        output = _as_prediction(scheduler.config.prediction_type, x0, x_in, alpha, sigma)
        x = scheduler.step(output, timestep, x, generator=generator, **step_kwargs).prev_sample
        if callback is not None:
            callback({"step": i, "t": t, "x": x, "denoised": x0})
    return x
