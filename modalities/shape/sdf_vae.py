"""SDF autoencoder: a PointNet++ encoder over surface points into a latent vector z, and an implicit
decoder f(x, z) ≈ signed distance (negative inside), as in DeepSDF (Park et al. 2019) with an encoder
instead of auto-decoding (Occupancy Networks, Mescheder et al. 2019). Trained with the clamped L1 loss
of DeepSDF eq. 4 on near-surface and uniform samples plus a small KL, so z suits latent diffusion.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from modalities.shape.point_layers import PointNetPlusPlusEncoder, farthest_point_sample, gather_points, mlp
from shared.first_stage.autoencoder import DiagonalGaussian, FirstStage


def fourier_features(x: torch.Tensor, octaves: int) -> torch.Tensor:
    """[x, sin(2^k π x), cos(2^k π x)] for k < octaves (NeRF's positional encoding)."""
    if octaves == 0:
        return x
    angles = x[..., None, :] * (math.pi * 2.0 ** torch.arange(octaves, device=x.device, dtype=x.dtype))[:, None]
    return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class ImplicitDecoder(nn.Module):
    """f(x, z): residual SiLU MLP on Fourier features of x, each block's input modulated by z through
    FiLM (Perez et al. 2018), h ← h + MLP(LN(h)·(1 + γ_k(z)) + β_k(z)): a latent-dependent scale, not
    only a bias (with a bias alone, reconstructions of the primitives scored 1-NNA-CD 0.795, with FiLM 0.695)."""

    def __init__(self, latent_dim: int, width: int = 128, depth: int = 4, octaves: int = 4):
        super().__init__()
        self.octaves = octaves
        self.embed = nn.Linear(3 * (1 + 2 * octaves), width)
        self.latent = nn.Linear(latent_dim, 2 * width * depth)
        self.blocks = nn.ModuleList(mlp(width, width, width, last_activation=False) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, queries: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """queries [B, Q, 3], z [B, Z] -> sdf [B, Q]."""
        h = self.embed(fourier_features(queries, self.octaves))
        films = self.latent(z)[:, None].chunk(2 * len(self.blocks), dim=-1)
        for block, norm, scale, shift in zip(self.blocks, self.norms, films[0::2], films[1::2]):
            h = h + block(norm(h) * (1 + scale) + shift)
        return self.out(h)[..., 0]


class SDFAutoencoder(FirstStage):
    def __init__(self, latent_dim: int = 64, num_centres: int = 128, k: int = 24, width: int = 128,
                 decoder_width: int = 128, decoder_depth: int = 4, octaves: int = 4, init_logvar: float = -6.0):
        super().__init__(latent_dim, channel_dim=-1)
        self.num_centres = num_centres
        self.encoder = PointNetPlusPlusEncoder(width, 2 * width, k=k)
        self.head = mlp(2 * width, 2 * width, 2 * latent_dim, last_activation=False)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.constant_(self.head[-1].bias, init_logvar)
        self.head[-1].bias.data[:latent_dim] = 0.0
        self.decoder = ImplicitDecoder(latent_dim, decoder_width, decoder_depth, octaves)

    def encode(self, surface: torch.Tensor, centres: torch.Tensor | None = None) -> DiagonalGaussian:
        """surface points [B, P, 3] (and their farthest-point centres, if computed) -> q(z | surface) [B, Z]."""
        surface = surface.float()
        if centres is None:
            centres = gather_points(surface, farthest_point_sample(surface, min(self.num_centres, surface.shape[1])))
        return DiagonalGaussian.from_parameters(self.head(self.encoder(surface, centres)[1]), dim=-1)

    def decode(self, z: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.decoder(queries.to(z.dtype), z)

    def decode_latent(self, z: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.decode(self.latent_stats.denormalize(z), queries)

    def last_layer(self) -> torch.Tensor:
        return self.decoder.out.weight


def clamped_l1(prediction: torch.Tensor, target: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """|clamp(f, ±δ) − clamp(s, ±δ)| (DeepSDF eq. 4): accuracy where it matters, near the surface."""
    if clamp is not None:
        prediction, target = prediction.clamp(-clamp, clamp), target.clamp(-clamp, clamp)
    return (prediction.float() - target.float()).abs()
