"""The one denoiser contract: ``denoiser(x_t, t, cond) -> x̂_0``.

``t`` holds one continuous time per leading row of ``x_t`` (see ``shared.diffusion.spaces``). Every sampler,
loss and guidance wrapper consumes the clean-data estimate x̂_0 (the "D(x; σ)" of EDM); what the raw
backbone predicts is the business of its ``Parameterization``. The conversion runs in float32 even
when the backbone runs under bf16 autocast.
"""
from __future__ import annotations

import torch
from torch import nn

from shared.diffusion.broadcast import append_dims
from shared.diffusion.parameterization import EpsilonPrediction, Parameterization
from shared.diffusion.schedules import NoiseSchedule


def broadcast_alpha_sigma(schedule: NoiseSchedule, t: torch.Tensor, x: torch.Tensor):
    """α_t, σ_t per row of x, in x's float dtype, broadcastable against x."""
    alpha, sigma = schedule.alpha_sigma(t)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return (append_dims(alpha.to(x.device, dtype), x.ndim), append_dims(sigma.to(x.device, dtype), x.ndim))


class Denoiser(nn.Module):
    """Wraps a raw backbone ``backbone(x_in, time, cond)`` into the x̂_0 contract."""

    def __init__(self, backbone: nn.Module, schedule: NoiseSchedule,
                 parameterization: Parameterization | None = None):
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule
        self.parameterization = parameterization or EpsilonPrediction()

    @property
    def self_conditioned(self) -> bool:
        """Whether the backbone also reads an earlier estimate x̃_0 (``shared.diffusion.self_conditioning``)."""
        return bool(getattr(self.backbone, "self_conditioning", False))

    def raw(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, self_condition: torch.Tensor | None = None):
        """The backbone's native prediction, with the α, σ used (for losses). ``self_condition``: an
        earlier x̂_0 for a self-conditioned backbone (None: the backbone's "no estimate" input)."""
        x_t = x_t.float()
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).expand(x_t.shape[0])
        alpha, sigma = broadcast_alpha_sigma(self.schedule, t, x_t)
        x_in = self.parameterization.backbone_input(x_t, alpha, sigma)
        time = self.parameterization.backbone_time(self.schedule, t).float()
        if self.self_conditioned:
            estimate = None if self_condition is None else self_condition.float()
            return self.backbone(x_in, time, cond, self_condition=estimate).float(), alpha, sigma
        if self_condition is not None:
            raise ValueError(f"{type(self.backbone).__name__} is not self-conditioned; it takes no earlier estimate")
        return self.backbone(x_in, time, cond).float(), alpha, sigma

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None,
                self_condition: torch.Tensor | None = None) -> torch.Tensor:
        raw, alpha, sigma = self.raw(x_t, t, cond, self_condition)
        return self.parameterization.to_x0(raw, x_t.float(), alpha, sigma)
