"""Randomness as a pure function of (seed, step, micro-batch): exact resume and process-count invariance.

Nothing random is carried as state between steps, so a resumed run needs only the step number. Every
draw is made for the *global* micro-batch and each process keeps its shard, so 2 processes × B see the
same noise as 1 process × 2B.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across Python runs, unlike hash())."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class BatchRandomness:
    """The draws of one micro-batch on one process (rank) of ``world``."""

    def __init__(self, seed: int, step: int, micro: int = 0, rank: int = 0, world: int = 1, device="cpu"):
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.generator = torch.Generator().manual_seed(derive_seed(seed, step, micro))

    def shard(self, global_values: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor drawn for the whole global micro-batch."""
        n = global_values.shape[0] // self.world
        return global_values[self.rank * n:(self.rank + 1) * n].to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0] * self.world, *x.shape[1:])
        return self.shard(torch.randn(shape, generator=self.generator, dtype=torch.float32)).to(x.dtype)

    def rand(self, n: int) -> torch.Tensor:
        return self.shard(torch.rand(n * self.world, generator=self.generator, dtype=torch.float64))

    def draw(self, sampler, n: int, *args) -> torch.Tensor:
        """``sampler(n_global, *args, generator)`` for the global batch, sharded (e.g. a time sampler)."""
        return self.shard(sampler(n * self.world, *args, self.generator))
