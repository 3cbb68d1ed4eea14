"""Exponential moving average of weights, the weights used for sampling (Polyak averaging)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from shared.training.checkpoint import with_prefix


class EMA:
    """θ_ema ← d·θ_ema + (1 − d)·θ for floating-point parameters; buffers are copied.

    The decay warms up as d_n = min(d, (1 + n)/(10 + n)) after n updates (as diffusers' EMAModel), so
    short runs are not dominated by their random initialisation."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.modules, self.decay = modules, decay
        self.shadow = {f"{name}.{key}": value.detach().clone()
                       for name, module in modules.items() for key, value in module.state_dict().items()}

    def _live(self):
        return {f"{name}.{key}": value for name, module in self.modules.items()
                for key, value in module.state_dict().items()}

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, updates: int):
        """The ``updates``-th update (0-based: the trainer's step before it advances)."""
        decay = self.decay_at(updates)
        live = self._live()
        floats = [k for k, v in live.items() if v.is_floating_point()]
        if floats:
            torch._foreach_lerp_([self.shadow[k] for k in floats], [live[k] for k in floats],
                                 1.0 - decay)
        for k, v in live.items():
            if not v.is_floating_point():
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]):
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily load the EMA weights into the modules (for previews and sampling)."""
        live = {k: v.detach().clone() for k, v in self._live().items()}
        self._load(self.shadow)
        try:
            yield
        finally:
            self._load(live)

    def _load(self, flat: dict[str, torch.Tensor]):
        for name, module in self.modules.items():
            prefix = name + "."
            module.load_state_dict(with_prefix(flat, prefix))
