"""Image denoising backbones with the core's raw-backbone signature ``backbone(x, time, cond) -> raw``.

``cond`` is a condition object with ``tokens`` [B, L, D], ``mask`` [B, L] and ``pooled`` [B, D] (text
or class labels alike, see ``shared.conditioning.conditioners``): the U-Net attends to the tokens, the DiT is
modulated by the pooled vector.
"""
from __future__ import annotations


import torch
from diffusers import UNet2DConditionModel
from torch import nn

from modalities.blocks import DiTBlock, modulate, timestep_embedding


class UNetBackbone(nn.Module):
    """diffusers ``UNet2DConditionModel`` with cross-attention to the condition tokens (Rombach et al. 2022)."""

    def __init__(self, in_channels: int, sample_size: int, cond_dim: int, out_channels: int | None = None,
                 block_out_channels=(64, 128), layers_per_block: int = 1, attention_head_dim: int = 8,
                 norm_num_groups: int = 32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), mid_block_type="UNetMidBlock2DCrossAttn"):
        super().__init__()
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels or in_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            mid_block_type=mid_block_type, cross_attention_dim=cond_dim,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups)

    def forward(self, x, time, cond):
        return self.unet(x, time, encoder_hidden_states=cond.tokens.to(x.dtype),
                         encoder_attention_mask=cond.mask).sample


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [grid², dim] (as in MAE / DiT)."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    freqs = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    parts = [f(axis.flatten()[:, None] * freqs[None]) for axis in (yy, xx) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


class DiTBackbone(nn.Module):
    """Diffusion Transformer on patches (Peebles & Xie 2023): time + pooled condition drive adaLN-Zero.

    Written here rather than taken from diffusers: its ``DiTTransformer2DModel`` conditions on class
    labels only, and text needs the pooled embedding.
    """

    def __init__(self, in_channels: int, sample_size: int, cond_dim: int, out_channels: int | None = None,
                 patch_size: int = 2, width: int = 256, depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch, self.out_channels = patch_size, out_channels or in_channels
        self.grid = sample_size // patch_size
        self.embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.register_buffer("positions", sincos_positions(self.grid, width), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final = nn.Linear(width, patch_size * patch_size * self.out_channels)
        for layer in (self.final_modulation[-1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions [B, N, width]."""
        return self.embed(x).flatten(2).transpose(1, 2) + self.positions

    def conditioning(self, time: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The adaLN input c = MLP(time embedding) + projected pooled condition, [B, width]."""
        return self.time_mlp(timestep_embedding(time, self.positions.shape[-1])) + self.cond_proj(pooled)

    def output(self, tokens: torch.Tensor, c: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Final adaLN layer and un-patchify: [B, out_channels, h, w]."""
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))
        p, g = self.patch, self.grid
        out = out.view(len(tokens), g, g, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(len(tokens), self.out_channels, h, w)

    def forward(self, x, time, cond):
        tokens, c = self.tokens(x), self.conditioning(time, cond.pooled.to(x.dtype))
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.output(tokens, c, *x.shape[-2:])
