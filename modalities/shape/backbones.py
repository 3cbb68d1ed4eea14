"""Denoising backbones for shape latents, with the core's signature ``backbone(x, time, cond) -> raw``.

``VectorMLPBackbone`` denoises latent vectors (a point cloud's global latent, an SDF latent);
``PointTransformerBackbone`` denoises latent point sets [B, M, 3 + D] and is permutation-equivariant
(no positional encoding: a point's coordinates are its only identity). Both are modulated by time and
a condition vector through adaLN-Zero (Peebles & Xie 2023). ``cond`` is a tensor [B, C] or a
condition object with ``pooled`` [B, C] (``shared.training.stages.as_condition`` of a label embedding).
"""
from __future__ import annotations

import torch
from torch import nn

from modalities.blocks import DiTBlock, modulate, timestep_embedding


def condition_vector(cond, batch: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    if cond is None:
        if dim:
            raise ValueError(f"this backbone was built with cond_dim={dim} and needs a condition")
        return like.new_zeros(batch, 0)
    vector = cond.pooled if hasattr(cond, "pooled") else cond
    if vector.shape != (batch, dim):
        raise ValueError(f"condition of shape {tuple(vector.shape)}, expected ({batch}, {dim})")
    return vector.to(like.dtype)


class ConditioningEmbedding(nn.Module):
    """c = MLP(sinusoidal(time)) + W·cond."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width) if cond_dim else None

    def forward(self, time, cond, like):
        c = self.time_mlp(timestep_embedding(time, self.time_mlp[0].in_features).to(like.dtype))
        if self.cond_proj is not None:
            c = c + self.cond_proj(condition_vector(cond, len(time), self.cond_dim, like))
        return c


class AdaLNOutput(nn.Module):
    """Final adaLN modulation and a zero-initialised projection, so the backbone starts at 0."""

    def __init__(self, width: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_features)
        for layer in (self.modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h, c):
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))


class ResidualMLPBlock(nn.Module):
    """h + gate·MLP(adaLN(h)): the DiT block without attention, for a single token."""

    def __init__(self, width: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, h, c):
        shift, scale, gate = self.modulation(c)[:, None].chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class VectorMLPBackbone(nn.Module):
    def __init__(self, dim: int, cond_dim: int = 0, width: int = 256, depth: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.embed = nn.Linear(dim, width)
        self.conditioning = ConditioningEmbedding(width, cond_dim)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width, mlp_ratio) for _ in range(depth))
        self.out = AdaLNOutput(width, dim)

    def forward(self, x, time, cond=None):
        h = self.embed(x)[:, None]
        c = self.conditioning(time, cond, h)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h, c)[:, 0]


class PointTransformerBackbone(nn.Module):
    def __init__(self, point_dim: int, cond_dim: int = 0, width: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(point_dim, width)
        self.conditioning = ConditioningEmbedding(width, cond_dim)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.out = AdaLNOutput(width, point_dim)

    def forward(self, x, time, cond=None):
        h = self.embed(x)
        c = self.conditioning(time, cond, h)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h, c)
