"""Random draws on the seeding generator's own device, then moved to where they are used.

Every mldm command seeds a CPU ``torch.Generator``; torch refuses to draw CUDA tensors from it. Drawing
on the generator's device and moving the result makes a seed give the same samples on any device (what
diffusers' ``randn_tensor`` does; importing diffusers.utils costs seconds, too much for the core).
"""
from __future__ import annotations

import torch


def _source(generator: torch.Generator | None, device) -> torch.device | None:
    return generator.device if generator is not None else device


def draw_randn(shape, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
    """N(0, I) of ``shape`` on ``device``."""
    return torch.randn(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def draw_rand(shape, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
    """U[0, 1) of ``shape`` on ``device``."""
    return torch.rand(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def draw_randint(low: int, high: int, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Integers in [low, high) of ``shape`` on ``device``."""
    return torch.randint(low, high, shape, generator=generator, device=_source(generator, device)).to(device)
