"""Denoising trajectories (``export.chain=true``): sample 0's state after every sampler step, thinned to a
number of frames a GIF can hold. A modality turns the states into pictures (decode, then render)."""
from __future__ import annotations

import torch
from omegaconf import DictConfig


class Trajectory:
    """A sampler callback keeping x's first ``rows`` rows (sample 0: one row of a tensor batch, its atoms
    of a molecule batch) after each step."""

    def __init__(self, rows: int = 1, max_frames: int = 40):
        self.rows, self.max_frames, self.states = rows, max_frames, []

    def __call__(self, info: dict) -> None:
        self.states.append(info["x"][:self.rows].detach().float().cpu())

    def frames(self) -> list[torch.Tensor]:
        """At most ``max_frames`` states, evenly spaced, the last step (the sample) always included."""
        if not self.states:
            return []
        stride = max(1, -(-len(self.states) // self.max_frames))
        picked = self.states[::stride]
        return picked if picked[-1] is self.states[-1] else picked[:self.max_frames - 1] + [self.states[-1]]


def chain_requested(cfg: DictConfig) -> bool:
    """``export.chain=true`` on ``mldm sample`` (training previews never record one)."""
    return bool((cfg.get("export") or {}).get("chain", False))


def max_chain_frames(cfg: DictConfig) -> int:
    return int((cfg.get("export") or {}).get("chain_frames", 40))


def chain_trajectory(cfg: DictConfig, indices: list[int], rows: int = 1) -> Trajectory | None:
    """The recorder a sampling batch hands its sampler: sample 0's, when ``export.chain=true`` and the batch
    holds sample 0 (``rows``: how many of x's leading rows are its), else None."""
    if not chain_requested(cfg) or indices[0] != 0:
        return None
    return Trajectory(rows, max_chain_frames(cfg))
