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
        parts.append(draw_batch(indices, item_generators(seed, indices)))
    return merge_batches(parts)


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
    return sampler(guided, x_T, denoiser.schedule, steps, space=space, generator=generators, cond=cond,
                   callback=callback)
