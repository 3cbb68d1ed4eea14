"""Hierarchical point-cloud VAE (LION, Zeng et al. 2022, §3.1): a global shape latent z₀ ∈ R^G and a set
of M latent points h ∈ R^{M×(3+D)} — coordinates plus D features — conditioned on z₀.

Encoder: farthest-point-sampled centres, a PointNet++ set abstraction (torch-geometric ``PointNetConv``)
over each centre's neighbourhood, then group-all over [feature, centre] max pooled into q(z₀|x)
(``PointNetPlusPlusEncoder``); each latent point's posterior is its centre plus a learned offset (and
features), given its local feature and z₀. Decoder: a small transformer over
the latent points modulated by z₀; each latent point emits K = P/M output points as offsets from its
own coordinates, so latent points are where the surface is (LION's latent points are a point cloud).
Each child maps a random 2-D seed through an MLP onto the latent point's surface patch (AtlasNet,
Groueix et al. 2018): decoded clouds are fresh random samples of the surface, with the point statistics
of the data, rather than one fixed pattern that set metrics such as 1-NNA would single out.
Training objective: Chamfer reconstruction + KL of both levels (``pointcloud_vae_loss``).
"""
from __future__ import annotations

import torch
from torch import nn

from modalities.blocks import DiTBlock
from modalities.shape.point_layers import (PointNetPlusPlusEncoder, farthest_point_sample, gather_points, mlp,
                                          nearest_index)
from shared.diffusion.draws import draw_randn
from shared.first_stage.autoencoder import DiagonalGaussian, LatentStatistics


class PointCloudVAE(nn.Module):
    def __init__(self, num_points: int = 2048, num_latent_points: int = 128, point_features: int = 4,
                 global_dim: int = 64, width: int = 128, k: int = 24, decoder_depth: int = 2, heads: int = 4,
                 init_logvar: float = -6.0, seed_dim: int = 2):
        super().__init__()
        if num_points % num_latent_points:
            raise ValueError(f"num_points={num_points} must be a multiple of num_latent_points={num_latent_points}")
        self.num_points, self.num_latent_points = num_points, num_latent_points
        self.children_per_point = num_points // num_latent_points
        self.point_dim, self.global_dim = 3 + point_features, global_dim
        # encoder
        self.encoder = PointNetPlusPlusEncoder(width, 2 * width, k=k)
        self.global_head = mlp(2 * width, 2 * width, 2 * global_dim, last_activation=False)
        self.point_head = mlp(width + global_dim, width, 2 * self.point_dim, last_activation=False)
        for head in (self.global_head, self.point_head):  # start near the mean with a small, fixed spread
            nn.init.zeros_(head[-1].weight)
            nn.init.constant_(head[-1].bias, init_logvar)
            head[-1].bias.data[: head[-1].out_features // 2] = 0.0
        # decoder
        self.point_embed = nn.Linear(self.point_dim, width)
        self.global_embed = mlp(global_dim, width, width, last_activation=False)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(decoder_depth))
        self.seed_dim = seed_dim
        self.patch_context = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
        self.patch_seed = nn.Linear(seed_dim, width, bias=False)
        self.patch_map = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 3))
        # latent statistics of both levels, estimated after training, stored with the weights
        self.global_stats = LatentStatistics(global_dim, channel_dim=-1)
        self.point_stats = LatentStatistics(self.point_dim, channel_dim=-1)

    def encode(self, x: torch.Tensor, centres: torch.Tensor | None = None,
               num_latent_points: int | None = None) -> tuple[DiagonalGaussian, DiagonalGaussian]:
        """x [B, P, 3] -> (q(z₀ | x) over [B, G], q(h | x, z₀) over [B, M, 3 + D]); z₀ enters the latent
        points' posterior as its mean (the reparameterised sample would tie the two levels' noise).
        ``centres``: x's farthest-point centres if already computed; ``num_latent_points`` other than M
        encodes part of a shape (shape completion)."""
        x = x.float()
        if centres is None:
            centres = gather_points(x, farthest_point_sample(x, num_latent_points or self.num_latent_points))
        local, pooled = self.encoder(x, centres)
        global_posterior = DiagonalGaussian.from_parameters(self.global_head(pooled), dim=-1)
        z0 = global_posterior.mean[:, None].expand(-1, centres.shape[1], -1)
        mean, logvar = self.point_head(torch.cat([local, z0], -1)).chunk(2, dim=-1)
        mean = torch.cat([centres + mean[..., :3], mean[..., 3:]], -1)
        return global_posterior, DiagonalGaussian(mean, logvar)

    def decode(self, z_global: torch.Tensor, z_points: torch.Tensor, seeds: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(z₀ [B, G], h [B, M, 3 + D]) -> points [B, M·K, 3]; ``seeds`` [B, M, K, seed_dim] are the
        children's patch coordinates (default: standard normal draws from ``generator``)."""
        b, m, _ = z_points.shape
        if seeds is None:
            seeds = draw_randn((b, m, self.children_per_point, self.seed_dim), generator)
        c = self.global_embed(z_global.float())
        tokens = self.point_embed(z_points.float())
        for block in self.blocks:
            tokens = block(tokens, c)
        offsets = self.patch_map(self.patch_context(tokens)[:, :, None] + self.patch_seed(seeds.to(tokens)))
        return (z_points[..., None, :3].float() + offsets.float()).flatten(1, 2)

    def forward(self, x, sample: bool = True, generator: torch.Generator | None = None):
        global_posterior, point_posterior = self.encode(x)
        pick = (lambda q: q.sample(generator)) if sample else (lambda q: q.mode())
        reconstruction = self.decode(pick(global_posterior), pick(point_posterior), generator=generator)
        return reconstruction, (global_posterior, point_posterior)

    def decode_latent(self, z_global: torch.Tensor, z_points: torch.Tensor,
                      generator: torch.Generator | None = None, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents (diffusion samples) -> points."""
        return self.decode(self.global_stats.denormalize(z_global), self.point_stats.denormalize(z_points),
                           seeds=seeds, generator=generator)

    @torch.no_grad()
    def estimate_latent_statistics(self, batches, seed: int = 0) -> None:
        """Per-channel shift/scale of both levels' posterior samples over the data (LDM's scale-by-std):
        samples, not means, since the priors are trained on samples — a level whose posterior stays
        near N(0, I) would otherwise be blown up by the tiny spread of its means."""
        was_training = self.training
        self.eval()
        generator = torch.Generator().manual_seed(seed)
        samples = [tuple(self._sample(q, generator) for q in self.encode(x)) for x in batches]
        self.global_stats.estimate(torch.cat([g for g, _ in samples]), per_channel=True)
        self.point_stats.estimate(torch.cat([p for _, p in samples]), per_channel=True)
        self.train(was_training)

    @staticmethod
    def _sample(posterior: DiagonalGaussian, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
        return (posterior.mean + posterior.std * noise).float()


def chamfer_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Chamfer distance per cloud (PointFlow's convention, as ``metrics.chamfer_distance``): nearest
    neighbours found without gradient, then the matched squared distances, with gradient."""
    forward = (x - gather_points(y, nearest_index(x, y))).square().sum(-1).mean(1)
    backward = (y - gather_points(x, nearest_index(y, x))).square().sum(-1).mean(1)
    return forward + backward


def pointcloud_vae_loss(x: torch.Tensor, reconstruction: torch.Tensor, posteriors, kl_global: float,
                        kl_points: float) -> dict[str, torch.Tensor]:
    """Chamfer reconstruction + λ₀·KL(q(z₀|x)‖N(0,I)) + λ_h·KL(q(h|x,z₀)‖N(0,I)), each KL averaged over
    its latent dimensions (LION eq. 3 with per-dimension weights)."""
    global_posterior, point_posterior = posteriors
    chamfer = chamfer_loss(reconstruction.float(), x.float()).mean()
    kl0 = global_posterior.kl().float().mean() / global_posterior.mean.shape[-1]
    klh = point_posterior.kl().float().mean() / point_posterior.mean[0].numel()
    total = chamfer + kl_global * kl0 + kl_points * klh
    return {"total": total, "chamfer": chamfer, "kl_global": kl0, "kl_points": klh}
