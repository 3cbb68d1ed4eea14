"""Self-conditioning (Chen et al. 2023, "Analog Bits", §3.1): the backbone also reads an earlier
estimate x̃_0 of the clean data, x̂_0 = f(x_t, x̃_0, t).

Training: with probability ``rate`` a first pass x̃_0 = f(x_t, ∅, t) without gradient is fed to the
second, which is the one the loss scores; otherwise x̃_0 = ∅ (the backbone's "no estimate" input).
Sampling: each step feeds the estimate of the step before (``EstimateFeedback``); the first gets ∅.
A backbone opts in with ``self_conditioning = True`` and a ``self_condition`` keyword argument.
"""
from __future__ import annotations

import torch

from shared.diffusion.draws import draw_rand


def training_estimate(denoiser, x_t: torch.Tensor, t: torch.Tensor, cond, rate: float,
                      generator: torch.Generator | None = None) -> torch.Tensor | None:
    """x̃_0 for this batch: a detached first-pass estimate with probability ``rate``, else None."""
    if not getattr(denoiser, "self_conditioned", False) or rate <= 0:
        return None
    if float(draw_rand(1, generator, x_t.device)) >= rate:   # one coin per batch, as Chen et al.
        return None
    with torch.no_grad():
        return denoiser(x_t, t, cond).detach()


class EstimateFeedback:
    """A denoiser that hands a self-conditioned one the estimates of its previous evaluation time.

    Wrappers above it may call it several times per step (classifier-free guidance: conditional, then
    unconditional); call k at a time gets call k's estimate from the latest earlier time, so each
    branch sees its own previous estimate. Make a fresh one per sampling run.
    """

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.schedule = getattr(denoiser, "schedule", None)
        self.parameterization = getattr(denoiser, "parameterization", None)
        self._time: float | None = None
        self._previous: list[torch.Tensor] = []
        self._current: list[torch.Tensor] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        time = float(torch.as_tensor(t).flatten()[0])
        if time != self._time:
            self._time, self._previous, self._current = time, self._current, []
        slot = len(self._current)
        estimate = self._previous[slot] if slot < len(self._previous) else None
        if estimate is not None and estimate.shape != x_t.shape:
            estimate = None
        x0 = self.denoiser(x_t, t, cond, self_condition=estimate)
        self._current.append(x0.detach())
        return x0


def with_estimate_feedback(denoiser):
    """``EstimateFeedback(denoiser)`` for a self-conditioned denoiser, else the denoiser itself."""
    return EstimateFeedback(denoiser) if getattr(denoiser, "self_conditioned", False) else denoiser
