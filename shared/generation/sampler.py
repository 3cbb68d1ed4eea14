"""The sampler and guidance a run's config names, as every modality's pipeline (and training preview) uses them."""
from __future__ import annotations

import functools

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from shared.diffusion.samplers import time_grid
from shared.diffusion.self_conditioning import with_estimate_feedback


def guided_sampler(cfg: DictConfig, guidance_scale: float | None):
    """The configured sampler and guidance wrapper factory; ``guidance_scale`` replaces the config's.
    The factory puts a self-conditioned denoiser under its estimate feedback first (one per call)."""
    node = OmegaConf.to_container(cfg.guidance)
    if guidance_scale is not None and node.get("scale") is not None:  # guidance=none keeps its null scale
        node["scale"] = guidance_scale
    guidance = built(node)

    def guide(denoiser, *args, **kwargs):
        return guidance(with_estimate_feedback(denoiser), *args, **kwargs)

    return with_progress(built(cfg.sampler)), guide


def built(node):
    """``instantiate(node)``; a builder's ValueError (a bad key, named) comes out as itself, not wrapped."""
    try:
        return instantiate(node)
    except InstantiationException as error:
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise


def with_progress(sampler, disable: bool | None = None, **bar_options):
    """``sampler`` with a progress bar over its steps on stderr (a 1,000-step DDPM is otherwise silent for
    minutes). ``disable=None`` shows it only on a terminal, so logs and captured output stay clean."""
    @functools.wraps(sampler)
    def reporting(denoiser, x_T, schedule, steps, callback=None, **kwargs):
        with tqdm(total=len(time_grid(schedule, steps)) - 1, desc="sampling", unit="step", leave=False,
                  disable=disable, **bar_options) as bar:
            def report(info):
                bar.update(1)
                if callback is not None:
                    callback(info)

            return sampler(denoiser, x_T, schedule, steps, callback=report, **kwargs)

    return reporting
