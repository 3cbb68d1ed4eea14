"""Random draws on the seeding generator's own device, then moved to where they are used.

Every mldm command seeds a CPU ``torch.Generator``; torch refuses to draw CUDA tensors from it. Drawing
on the generator's device and moving the result makes a seed give the same samples on any device (what
diffusers' ``randn_tensor`` does; importing diffusers.utils costs seconds, too much for the core).

Where a generator is an :class:`ItemGenerators` (one generator per item), every draw is made item by
item, so an item's noise does not depend on which batch it is drawn in.
"""
from __future__ import annotations

import torch


class ItemGenerators:
    """One ``torch.Generator`` per item of a batch. A draw of shape [rows, ...] is the concatenation of
    each item's own draw of its rows (one row per item unless ``rows_per_item`` says otherwise: a
    molecule's atoms), so item i's noise is a function of its generator alone."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)
        self.device = self.generators[0].device if self.generators else torch.device("cpu")

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, draw, shape, rows_per_item=None, **kwargs) -> torch.Tensor:
        shape = tuple(shape) if not isinstance(shape, int) else (shape,)
        counts = [1] * len(self) if rows_per_item is None else [int(c) for c in rows_per_item]
        if len(counts) != len(self) or shape[0] != sum(counts):
            raise ValueError(f"a draw of shape {list(shape)} does not split into the rows of {len(self)} items "
                             f"(rows per item: {counts[:4]}{' ...' if len(counts) > 4 else ''})")
        return torch.cat([draw((count, *shape[1:]), generator=generator, device=self.device, **kwargs)
                          for generator, count in zip(self.generators, counts)])

    def each(self, draw) -> torch.Tensor:
        """``draw(generator)`` for every item's generator, concatenated (e.g. one multinomial pick each)."""
        return torch.cat([draw(generator) for generator in self.generators])


Generator = torch.Generator | ItemGenerators | None


def _source(generator: Generator, device) -> torch.device | None:
    return generator.device if generator is not None else device


def draw_randn(shape, generator: Generator = None, device=None, dtype=None, rows_per_item=None) -> torch.Tensor:
    """N(0, I) of ``shape`` on ``device``."""
    if isinstance(generator, ItemGenerators):
        return generator.draw(torch.randn, shape, rows_per_item, dtype=dtype).to(device)
    return torch.randn(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def draw_rand(shape, generator: Generator = None, device=None, dtype=None, rows_per_item=None) -> torch.Tensor:
    """U[0, 1) of ``shape`` on ``device``."""
    if isinstance(generator, ItemGenerators):
        return generator.draw(torch.rand, shape, rows_per_item, dtype=dtype).to(device)
    return torch.rand(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def draw_randint(low: int, high: int, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Integers in [low, high) of ``shape`` on ``device``."""
    return torch.randint(low, high, shape, generator=generator, device=_source(generator, device)).to(device)
