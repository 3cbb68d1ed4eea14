"""Network blocks any modality's backbone can use: the sinusoidal time embedding and the DiT
transformer block with adaLN-Zero conditioning (tokens [B, L, W], one conditioning vector [B, W])."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn


def timestep_embedding(time: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of a (float) time (Vaswani et al. 2017; as in DDPM / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=time.device, dtype=torch.float32) / half)
    angles = time.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Fig. 3)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.modulation[-1].weight)  # "-Zero": every block starts as the identity
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x, c, positions: torch.Tensor | None = None, rotary: tuple | None = None):
        """``positions`` [L, W], if given, is added to the attention's input only (the residual stream keeps
        none, so a zero-gated block stays the exact identity). ``rotary``: (cos, sin) [L, W / heads] rotating
        queries and keys (RoPE, Su et al. 2021), so scores see relative positions, with their sign."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
        b, n, w = x.shape
        attention_in = modulate(self.norm1(x), shift1, scale1)
        if positions is not None:
            attention_in = attention_in + positions
        q, k, v = self.qkv(attention_in).view(b, n, 3, self.heads, w // self.heads).transpose(1, 3).unbind(2)
        if rotary is not None:
            q, k = apply_rotary_emb(q, rotary), apply_rotary_emb(k, rotary)
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + gate1[:, None] * self.proj(attended.transpose(1, 2).reshape(b, n, w))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
