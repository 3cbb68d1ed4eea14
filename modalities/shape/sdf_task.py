"""`mldm train` for SDF latents: the SDF autoencoder (surface points -> z -> f(x, z)), then a
class-conditional latent diffusion prior over z (``shared.training.latent_diffusion``)."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.shape.components import (build_label_encoder, build_sdf_autoencoder, build_sdf_denoiser, class_indices,
                                         load_shapes)
from modalities.shape.sdf_pipeline import SDFPipeline, export_latents
from modalities.shape.point_layers import farthest_point_centres
from modalities.shape.sdf_vae import SDFAutoencoder, clamped_l1
from shared.training.latent_diffusion import Conditions, EncodedLatents, LatentDiffusionStage
from shared.training.stages import FirstStageTask


class SDFAutoencoderStage(FirstStageTask):
    """Each step: encode the surface points, decode a random subset of ``queries`` SDF samples per shape
    (drawn from the step's randomness, so resume stays exact), clamped L1 + KL."""

    def __init__(self, autoencoder: SDFAutoencoder, data: dict, queries: int, clamp: float | None,
                 kl_weight: float, stats_batch: int = 128, preview=None):
        super().__init__(autoencoder)
        self.data, self.queries, self.clamp = data, queries, clamp
        self.kl_weight, self.stats_batch, self.preview_fn = kl_weight, stats_batch, preview
        if "sdf" not in data:
            raise ValueError("the SDF autoencoder needs SDF samples: set data.with_sdf=true")
        self.centres = farthest_point_centres(data["points"], autoencoder.num_centres)

    def num_examples(self):
        return len(self.data["points"])

    def batch(self, indices, device):
        return {"surface": self.data["points"][indices].to(device), "centres": self.centres[indices].to(device),
                "sdf_points": self.data["sdf_points"][indices], "sdf": self.data["sdf"][indices]}

    def losses(self, batch, random, step):
        sdf_points, sdf = batch["sdf_points"], batch["sdf"]
        pick = random.randn_like(sdf).argsort(dim=1)[:, :self.queries].to(sdf_points.device)  # uniform subsets
        queries = sdf_points.gather(1, pick[..., None].expand(-1, -1, 3))
        target = sdf.gather(1, pick)
        device = batch["surface"].device
        posterior = self.autoencoder.encode(batch["surface"], batch["centres"])
        z = posterior.mean + posterior.std * random.randn_like(posterior.mean)
        prediction = self.autoencoder.decode(z, queries.to(device))
        l1 = clamped_l1(prediction, target.to(device), self.clamp).mean()
        kl = posterior.kl().float().mean() / posterior.mean.shape[-1]
        total = l1 + self.kl_weight * kl
        return {"main": total}, {"loss": float(total.detach()), "l1": float(l1.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def finalize(self):
        device = next(self.autoencoder.parameters()).device
        points = self.data["points"]
        self.autoencoder.estimate_latent_statistics(
            (points[i:i + self.stats_batch].to(device) for i in range(0, len(points), self.stats_batch)),
            per_channel=True)

    @torch.no_grad()
    def preview(self, step, out_dir: Path):
        if self.preview_fn is not None:
            z = self.autoencoder.encode(self.data["points"][:8].to(next(self.autoencoder.parameters()).device)).mean
            self.preview_fn(z, self.data["labels"][:8], out_dir)


def autoencoder_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> SDFAutoencoderStage:
    data, label_names = load_shapes(cfg)
    training = cfg.modality.autoencoder_training
    autoencoder = build_sdf_autoencoder(cfg)
    return SDFAutoencoderStage(autoencoder, data, training.queries, training.clamp, training.kl_weight,
                               preview=lambda z, labels, out: export_latents(cfg, autoencoder, z, labels, out,
                                                                              label_names, normalized=False))


def diffusion_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> LatentDiffusionStage:
    data, label_names = load_shapes(cfg, with_sdf=False)
    autoencoder = build_sdf_autoencoder(cfg, run_dir, device)
    label_encoder = build_label_encoder(cfg, len(label_names)).to(device)
    denoiser = build_sdf_denoiser(cfg, autoencoder, label_encoder)
    conditions = Conditions(labels=class_indices(data["labels"], label_names), label_encoder=label_encoder)

    def preview(task: LatentDiffusionStage, out_dir: Path):
        pipeline = SDFPipeline(cfg, run_dir, device, denoiser=task.denoiser, label_encoder=label_encoder)
        pipeline.export(pipeline.sample(cfg.trainer.sample_count, seed=0, steps=cfg.trainer.sample_steps), out_dir)

    latents = EncodedLatents(autoencoder, data["points"], lambda x: x, conditions, device=device)
    return LatentDiffusionStage(denoiser, latents, instantiate(cfg.loss), cfg_dropout=cfg.modality.cfg_dropout,
                                preview=preview)
