"""One sampling path for every modality: per-item seeds, batches, and the guided sampler call.

Sample i is a function of (seed, i) alone: every draw for item i (its size, x_T, each step's noise, the
decoder's own noise) comes from a generator seeded by (seed, i), so a sample does not depend on the batch
size it was drawn with nor on how many processes share the work. ``mldm sample``, ``mldm evaluate`` and
training previews all draw through :func:`generate`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from omegaconf import DictConfig

from shared.diffusion.draws import ItemGenerators
from shared.errors import NonFiniteSamples
from shared.generation.sampler import guided_sampler
from shared.training.randomness import derive_seed

DEFAULT_BATCH_SIZE = 256


def item_generators(seed: int, indices: Sequence[int]) -> ItemGenerators:
    """One CPU generator per item, seeded by (seed, index)."""
    return ItemGenerators([torch.Generator().manual_seed(derive_seed(seed, int(i))) for i in indices])


def generate(draw_batch: Callable[[list[int], ItemGenerators], dict], num_samples: int, seed: int,
             batch_size: int | None = None) -> dict:
    """``draw_batch(indices, generators)`` over consecutive batches of items, merged (:func:`merge_batches`)."""
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    parts = []
    for start in range(0, num_samples, batch_size):
        indices = list(range(start, min(start + batch_size, num_samples)))
        parts.append(check_finite(draw_batch(indices, item_generators(seed, indices))))
    return merge_batches(parts)


def check_finite(batch: dict) -> dict:
    """Decoded samples with NaN/inf are never handed on to be written (``sample_latent`` checks the latents)."""
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteSamples(f"decoding produced non-finite '{key}' values from finite latents; nothing "
                                   f"was written (a decoder trained too briefly, or latents far out of range)")
    return batch


def merge_batches(parts: list[dict]) -> dict:
    """Per key: tensors concatenated along items, lists joined, a value only one batch has (the chain of
    sample 0) kept, and anything else equal across batches (the seed) kept once."""
    merged = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        present = [v for v in values if v is not None]
        if not present:
            merged[key] = None
        elif len(present) == 1 and len(values) > 1:
            merged[key] = present[0]
        elif all(isinstance(v, torch.Tensor) for v in present):
            merged[key] = torch.cat(present)
        elif all(isinstance(v, list) for v in present):
            merged[key] = [item for v in present for item in v]
        elif all(v == present[0] for v in present):
            merged[key] = present[0]
        else:
            raise ValueError(f"cannot merge '{key}' across sampling batches: {present[:2]}")
    return merged


@torch.no_grad()
def sample_latent(cfg: DictConfig, denoiser, x_T: torch.Tensor, generators: ItemGenerators, steps, cond=None,
                  uncond=None, space=None, wrap: Callable | None = None, callback: Callable | None = None):
    """The configured sampler from ``x_T`` with the configured guidance (the unconditional input ``uncond``,
    statistics per item of ``space``); ``wrap`` adds a wrapper on top (inpainting); ``steps`` is a count
    or an explicit time grid (SDEdit)."""
    sampler, guidance = guided_sampler(cfg, cfg.get("guidance_scale"))
    guided = guidance(denoiser, uncond=uncond, space=space)
    if wrap is not None:
        guided = wrap(guided)
    z = sampler(guided, x_T, denoiser.schedule, steps, space=space, generator=generators, cond=cond,
                callback=callback)
    finite = torch.isfinite(z.reshape(len(z), -1)).all(dim=1) if z.ndim else torch.isfinite(z)
    if not bool(finite.all()):
        raise NonFiniteSamples(f"sampling produced non-finite values in {int((~finite).sum())} of {len(finite)} "
                               f"latents; nothing was written. Likely cause: {likely_cause(cfg)}")
    return z


def likely_cause(cfg: DictConfig) -> str:
    scale = cfg.get("guidance_scale")
    if scale is None:
        scale = (cfg.get("guidance") or {}).get("scale")
    if scale is not None and abs(float(scale)) > 50:
        return f"guidance_scale={float(scale):g}, far above the usual 1-15: lower it"
    sampler = str((cfg.get("sampler") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    return (f"the sampler diverged ({sampler}, steps={cfg.get('steps')}, guidance scale {scale}): try more "
            f"steps, sampler=ddim or a smaller guidance_scale")
