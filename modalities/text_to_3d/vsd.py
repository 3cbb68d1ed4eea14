"""Variational score distillation (Wang et al. 2023, ProlificDreamer, eq. 9):

    ∇_θ L_VSD = E_{t,ε,c}[ w(t) (ε̂_pretrain(x_t; y, t) − ε̂_φ(x_t; y, t, c)) ∂x/∂θ ],

ε̂_φ the score of the renders' own distribution: a copy of the prior, conditioned on the camera c as well,
fine-tuned on the renders by denoising score matching (their eq. 10) as the field trains. SDS is the case
ε̂_φ = ε, a single Dirac particle: in x̂₀ terms VSD pulls the render towards x̂₀_pretrain and away from
x̂₀_φ, where SDS pushes it away from itself.

ProlificDreamer fine-tunes a LoRA of Stable Diffusion; the prior here is small enough to copy whole, and the
whole copy is trained. The camera enters through the condition, so the copy is
the prior's own network unchanged: its camera-to-world pose [R | eye] (12 numbers, ProlificDreamer feeds
the 4×4 matrix) goes through an MLP whose output is added to the pooled text embedding (the DiT's adaLN input)
and appended as one more token (a U-Net's cross-attention). The MLP's last layer starts at zero, so the copy
starts as the prior exactly.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from shared.conditioning.text_encoder import TextCondition
from shared.diffusion.draws import draw_rand
from shared.diffusion.losses import DenoisingScoreMatching, SimpleWeighting, UniformTime

from .cameras import Cameras

CAMERA_DROPOUT = 0.1   # threestudio's VSD: the LoRA sees no camera 10% of the time


def camera_features(cameras: Cameras) -> torch.Tensor:
    """The camera-to-world pose [R | eye] of each camera, flattened: [N, 12]."""
    pose = torch.cat([cameras.rotation, cameras.eye[..., None]], dim=-1)
    return pose.flatten(1).float()


class CameraEmbedding(nn.Module):
    """Camera pose -> a condition-sized vector; zero until trained (the last layer starts at zero)."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, cameras: Cameras) -> torch.Tensor:
        return self.net(camera_features(cameras))


class ParticleScore(nn.Module):
    """ε̂_φ of VSD: a trainable copy of the prior's x̂₀ denoiser, conditioned on (text, camera). Call it like
    any core denoiser on a condition from ``condition``; ``loss`` is its denoising score matching on renders."""

    def __init__(self, denoiser: nn.Module, condition_dim: int):
        super().__init__()
        self.denoiser = copy.deepcopy(denoiser).requires_grad_(True).train()
        self.camera = CameraEmbedding(condition_dim)
        self.matching = DenoisingScoreMatching(SimpleWeighting(), UniformTime(), self_conditioning_rate=0.0)

    @property
    def schedule(self):
        return self.denoiser.schedule

    def condition(self, cond: TextCondition, cameras: Cameras, keep: torch.Tensor | None = None) -> TextCondition:
        """The text condition with each camera added (to ``pooled``) and appended (as a token); items where
        ``keep`` is False get no camera."""
        if not isinstance(cond, TextCondition):
            raise TypeError(f"variational score distillation needs an mldm text condition, got {type(cond).__name__}")
        embedding = self.camera(cameras.to(cond.device)).to(cond.pooled.dtype)
        if keep is not None:
            embedding = embedding * keep[:, None].to(embedding)
        mask = torch.ones(len(cond), 1, dtype=torch.bool, device=cond.device)
        return TextCondition(tokens=torch.cat([cond.tokens, embedding[:, None].to(cond.tokens.dtype)], dim=1),
                             mask=torch.cat([cond.mask, mask], dim=1), pooled=cond.pooled + embedding)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        return self.denoiser(x_t, t, cond)

    def loss(self, latents: torch.Tensor, cond: TextCondition, cameras: Cameras,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising score matching of the copy on the renders' latents (detached: the field is not trained by
        it), in the prior's own parameterisation, t ~ U(0, 1], each camera dropped with CAMERA_DROPOUT."""
        keep = draw_rand(len(latents), generator, latents.device) >= CAMERA_DROPOUT
        conditioned = self.condition(cond, cameras, keep)
        per_element = self.matching(self.denoiser, latents.detach().float(), conditioned, generator=generator)
        return per_element.flatten(1).mean(1).mean()

