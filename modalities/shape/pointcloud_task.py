"""`mldm train` for point clouds (LION's three stages): the hierarchical VAE, then a diffusion prior
over the global latent z₀ (class-conditional, with CFG dropout), then a diffusion prior over the latent
points h conditioned on z₀. Both priors see the frozen VAE's normalised posterior samples."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from modalities.shape.components import (build_global_denoiser, build_label_encoder, build_point_denoiser, build_vae,
                                         class_indices, load_shapes, point_condition)
from modalities.shape.pointcloud_pipeline import PointCloudPipeline
from modalities.shape.export import export_point_clouds
from modalities.shape.point_layers import farthest_point_centres
from modalities.shape.pointcloud_vae import PointCloudVAE, pointcloud_vae_loss
from shared.training.latent_diffusion import Conditions, EncodedLatents, LatentDiffusionStage
from shared.training.stages import FirstStageTask


class PointCloudAutoencoderStage(FirstStageTask):
    """The hierarchical VAE (LION eq. 3): Chamfer reconstruction + weighted KLs of z₀ and the latent points."""

    def __init__(self, vae: PointCloudVAE, points: torch.Tensor, kl_global: float, kl_points: float,
                 stats_batch: int = 128):
        super().__init__(vae)
        self.points, self.kl_global, self.kl_points = points, kl_global, kl_points
        self.stats_batch = stats_batch
        self.centres = farthest_point_centres(points, vae.num_latent_points)

    def num_examples(self):
        return len(self.points)

    def batch(self, indices, device):
        return {"x": self.points[indices].to(device), "centres": self.centres[indices].to(device)}

    def losses(self, batch, random, step):
        x = batch["x"]
        posteriors = self.autoencoder.encode(x, batch["centres"])
        z0, h = (q.mean + q.std * random.randn_like(q.mean) for q in posteriors)
        vae = self.autoencoder
        seeds = random.randn_like(h.new_empty(*h.shape[:2], vae.children_per_point, vae.seed_dim))
        reconstruction = self.autoencoder.decode(z0, h, seeds)
        terms = pointcloud_vae_loss(x, reconstruction, posteriors, self.kl_global, self.kl_points)
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss"] = logs.pop("total")
        return {"main": terms["total"]}, logs

    @torch.no_grad()
    def finalize(self):
        device = next(self.autoencoder.parameters()).device
        self.autoencoder.estimate_latent_statistics(self.points[i:i + self.stats_batch].to(device)
                                            for i in range(0, len(self.points), self.stats_batch))

    @torch.no_grad()
    def preview(self, step, out_dir: Path):
        x = self.points[:8].to(next(self.autoencoder.parameters()).device)
        reconstruction = self.autoencoder(x, sample=False, generator=torch.Generator().manual_seed(step))[0]
        export_point_clouds(out_dir, torch.cat([x, reconstruction]).cpu())


class GlobalLatent(nn.Module):
    """The VAE seen as a first stage whose latent is z₀ alone (for ``EncodedLatents``)."""

    def __init__(self, vae: PointCloudVAE):
        super().__init__()
        self.vae, self.latent_stats = vae, vae.global_stats

    def encode(self, x):
        return self.vae.encode(x)[0]


class PointLatents:
    """The point prior's data (``shared.training.latent_diffusion.LatentData``): normalised latent points h,
    conditioned on the normalised z₀ of the same shape (both drawn from the posterior each step, as LION trains
    its second prior) and on the class, which CFG dropout replaces by the null class (z₀ alone need not carry
    the class: the latent points can make it redundant for the decoder)."""

    def __init__(self, vae: PointCloudVAE, points: torch.Tensor, labels: torch.Tensor, label_encoder, device,
                 encode_batch: int = 128):
        self.vae, self.labels, self.label_encoder = vae, labels, label_encoder
        vae.to(device).eval().requires_grad_(False)
        with torch.no_grad():  # the VAE is frozen: encode every shape once
            posteriors = [vae.encode(points[i:i + encode_batch].to(device)) for i in range(0, len(points), encode_batch)]
            self.moments = {name: torch.cat([getattr(q[level], attr).float().cpu() for q in posteriors])
                            for level, key in ((0, "global"), (1, "points"))
                            for attr, name in (("mean", f"{key}_mean"), ("std", f"{key}_std"))}

    def num_examples(self):
        return len(self.moments["global_mean"])

    def batch(self, indices, device):
        return {**{k: v[indices].to(device) for k, v in self.moments.items()}, "labels": self.labels[indices]}

    def draw(self, batch, random):
        z0 = batch["global_mean"] + batch["global_std"] * random.randn_like(batch["global_mean"])
        h = batch["points_mean"] + batch["points_std"] * random.randn_like(batch["points_mean"])
        batch["z0"] = self.vae.global_stats.normalize(z0)  # drawn with h: the condition it is trained under
        return self.vae.point_stats.normalize(h), None

    def condition(self, batch, z, drop):
        labels = drop(batch["labels"], self.label_encoder.null_index)
        return point_condition(batch["z0"], self.label_encoder, labels)

    def trained_modules(self):
        return {"label_encoder": self.label_encoder}


def autoencoder_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> PointCloudAutoencoderStage:
    data, _ = load_shapes(cfg)
    training = cfg.modality.autoencoder_training
    return PointCloudAutoencoderStage(build_vae(cfg), data["points"], training.kl_global, training.kl_points)


def global_prior_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> LatentDiffusionStage:
    data, label_names = load_shapes(cfg)
    vae = build_vae(cfg, run_dir, device)
    label_encoder = build_label_encoder(cfg, len(label_names)).to(device)
    denoiser = build_global_denoiser(cfg, vae, label_encoder)
    conditions = Conditions(labels=class_indices(data["labels"], label_names), label_encoder=label_encoder)
    latents = EncodedLatents(GlobalLatent(vae), data["points"], lambda x: x, conditions, device=device)
    return LatentDiffusionStage(denoiser, latents, instantiate(cfg.loss), cfg_dropout=cfg.modality.cfg_dropout)


def point_prior_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> LatentDiffusionStage:
    data, label_names = load_shapes(cfg)
    vae = build_vae(cfg, run_dir, device)
    label_encoder = build_label_encoder(cfg, len(label_names)).to(device)
    denoiser = build_point_denoiser(cfg, vae, label_encoder)

    def preview(task: LatentDiffusionStage, out_dir: Path):
        pipeline = PointCloudPipeline(cfg, run_dir, device, point_prior=(task.denoiser, label_encoder))
        pipeline.export(pipeline.sample(cfg.trainer.sample_count, seed=0, steps=cfg.trainer.sample_steps), out_dir)

    latents = PointLatents(vae, data["points"], class_indices(data["labels"], label_names), label_encoder, device)
    return LatentDiffusionStage(denoiser, latents, instantiate(cfg.loss), cfg_dropout=cfg.modality.cfg_dropout,
                                preview=preview)
