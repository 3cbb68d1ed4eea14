"""`mldm train` for images: the autoencoder stage, then latent (or pixel) diffusion, from the config."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.image.components import build_conditioner, build_denoiser, build_first_stage, load_images, to_model
from modalities.image.export import export_image_samples
from shared.conditioning.conditioners import ClassLabelEncoder
from shared.training.latent_diffusion import Conditions, EncodedLatents, LatentDiffusionStage
from shared.training.stages import AutoencoderStage
from shared.training.checkpoint import load_frozen_first_stage


def preview_images(images: torch.Tensor, out_dir: Path, prompts=None):
    export_image_samples(out_dir, images.float().clamp(-1, 1).cpu(), prompts=prompts)


def autoencoder_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> AutoencoderStage:
    images, _, _ = load_images(instantiate(cfg.data))
    first_stage = build_first_stage(cfg)
    if first_stage is None:
        raise ValueError("stage 'autoencoder' needs an autoencoder config (autoencoder=...)")
    training = cfg.modality.autoencoder_training
    adversarial = instantiate(training.adversarial)
    return AutoencoderStage(first_stage, adversarial, images, to_model, kl_weight=training.kl_weight,
                            preview=preview_images)


def diffusion_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> LatentDiffusionStage:
    """Latent diffusion on the frozen autoencoder's latents; pixel diffusion when the run has no autoencoder."""
    images, captions, labels = load_images(instantiate(cfg.data))
    first_stage = build_first_stage(cfg)
    if first_stage is not None:
        load_frozen_first_stage(first_stage, run_dir, device)
    conditioner = build_conditioner(cfg).to(device)
    if isinstance(conditioner, ClassLabelEncoder):
        conditions = Conditions(labels=labels, label_encoder=conditioner)
    else:
        conditions = Conditions(captions=captions, text_encoder=conditioner)
    denoiser = build_denoiser(cfg, first_stage, conditioner)
    sample_settings = cfg.trainer

    def preview(task: LatentDiffusionStage, out_dir: Path):
        from modalities.image.pipeline import generate_images

        prompts = (conditions.vocabulary or [str(i) for i in range(conditioner.num_classes)])
        prompts = (prompts * (sample_settings.sample_count // len(prompts) + 1))[:sample_settings.sample_count]
        x = generate_images(cfg, task.denoiser, first_stage, conditioner, prompts, steps=sample_settings.sample_steps,
                            seed=0, device=device)["images"]
        preview_images(x, out_dir, prompts)

    latents = EncodedLatents(first_stage, images, to_model, conditions, device=device)
    return LatentDiffusionStage(denoiser, latents, instantiate(cfg.loss), cfg_dropout=cfg.modality.cfg_dropout,
                                preview=preview)
