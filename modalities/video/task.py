"""`mldm train` for video ("Align your latents", Blattmann et al. 2023), four stages declared in
``configs/modality/video.yaml``:

``autoencoder``      the image autoencoder, on the videos' frames
``image_diffusion``  the image LDM, on the frames' latents with their videos' captions
``video_diffusion``  the image LDM's backbone with temporal layers, trained on whole videos (spatial layers frozen
                     unless ``modality.temporal.train_spatial``), with known-frame conditioning drawn per video
``decoder``          the image decoder with temporal layers, fine-tuned against a 3D PatchGAN (encoder frozen)
"""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.image.task import preview_images
from modalities.video import components as parts
from modalities.video.autoencoder import VideoAutoencoder
from modalities.video.conditions import with_known_frames
from modalities.video.export import export_videos
from shared.errors import ConfigError
from shared.training.checkpoint import load_frozen_first_stage, load_stage_weights
from shared.training.latent_diffusion import Conditions, EncodedLatents, LatentDiffusionStage
from shared.training.stages import AutoencoderStage, posterior_draw, with_adversarial


def _data(cfg: DictConfig):
    return parts.load_videos(instantiate(cfg.data))


def autoencoder_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> AutoencoderStage:
    frames, _ = parts.frames_of(*_data(cfg))
    training = cfg.modality.autoencoder_training
    return AutoencoderStage(parts.build_first_stage(cfg), instantiate(training.adversarial), frames, parts.to_model,
                            kl_weight=training.kl_weight, preview=preview_images)


def image_diffusion_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> LatentDiffusionStage:
    frames, captions = parts.frames_of(*_data(cfg))
    first_stage = load_frozen_first_stage(parts.build_first_stage(cfg), run_dir, device)
    conditioner = parts.build_conditioner(cfg).to(device)
    denoiser = parts.build_image_denoiser(cfg, first_stage, conditioner)
    conditions = Conditions(captions=captions, text_encoder=conditioner)
    latents = EncodedLatents(first_stage, frames, parts.to_model, conditions, device=device)
    return LatentDiffusionStage(denoiser, latents, instantiate(cfg.loss), cfg_dropout=cfg.modality.cfg_dropout)


class VideoLatents:
    """Videos through the frozen image encoder, frame by frame (posterior mean and std, encoded once); each
    step a reparameterised draw, normalised by the image latents' statistics, and per video a number of known
    leading frames: none with probability ``text_only``, else uniform in 1..``context_frames``."""

    def __init__(self, first_stage, videos: torch.Tensor, conditions: Conditions, context_frames: int,
                 text_only: float, device):
        frames = EncodedLatents(first_stage, videos.flatten(0, 1), parts.to_model, conditions, device=device)
        self.mean, self.std = (v.unflatten(0, videos.shape[:2]) for v in (frames.mean, frames.std))
        self.first_stage, self.conditions = first_stage, conditions
        self.context_frames, self.text_only = context_frames, text_only

    def num_examples(self):
        return len(self.mean)

    def batch(self, indices, device):
        return {"mean": self.mean[indices].to(device), "std": self.std[indices].to(device),
                "index": self.conditions.index[indices]}

    def draw(self, batch, random):
        z = batch["mean"] + batch["std"] * random.randn_like(batch["mean"])
        z = self.first_stage.latent_stats.normalize(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        u = random.rand(len(z)).cpu()
        known = torch.zeros(len(z), dtype=torch.long)
        if self.context_frames > 0:
            rest = ((u - self.text_only) / (1 - self.text_only)).clamp(0, 1 - 1e-6)
            known = torch.where(u < self.text_only, 0, 1 + (rest * self.context_frames).long())
        batch["known"] = known
        return z, None

    def condition(self, batch, z, drop):
        text = self.conditions(batch["index"], z.device)
        return drop(with_known_frames(text, z, batch["known"]), self.conditions.table.index(-1).to(z.device))

    def trained_modules(self):
        return {}


def video_diffusion_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> LatentDiffusionStage:
    videos, captions = _data(cfg)
    first_stage = load_frozen_first_stage(parts.build_first_stage(cfg), run_dir, device)
    conditioner = parts.build_conditioner(cfg).to(device)
    image = parts.build_image_denoiser(cfg, first_stage, conditioner)
    load_stage_weights(run_dir, "image_diffusion", {"denoiser": image})
    denoiser = parts.build_video_denoiser(cfg, image)
    temporal = cfg.modality.temporal
    conditions = Conditions(captions=captions, text_encoder=conditioner)
    if denoiser.backbone.text_whitening is not None:  # over every prompt it trains on, null too
        denoiser.backbone.text_whitening.fit(conditions.table.pooled)
    latents = VideoLatents(first_stage, videos, conditions, temporal.context_frames, temporal.text_only, device)
    settings = cfg.trainer

    def preview(task: LatentDiffusionStage, out_dir: Path):
        from modalities.video.sampling import generate_videos

        prompts = (conditions.vocabulary * settings.sample_count)[:settings.sample_count]
        videos = generate_videos(cfg, task.denoiser, parts.FrameByFrame(first_stage), conditioner, prompts,
                                 steps=settings.sample_steps, seed=0, device=device,
                                 latent_shape=parts.latent_shape(cfg, first_stage), num_frames=cfg.data.num_frames,
                                 window=cfg.data.num_frames)["videos"]
        export_videos(out_dir, videos, prompts=prompts)

    loss = instantiate(temporal.loss if temporal.get("loss") else cfg.loss)
    return LatentDiffusionStage(denoiser, latents, loss, cfg_dropout=cfg.modality.cfg_dropout, preview=preview)


class DecoderStage:
    """The video decoder fine-tuned on whole videos: L1 reconstruction + a 3D PatchGAN (hinge loss, adaptive
    weight) over frame stacks; the encoder and latent statistics are the image autoencoder's, frozen."""

    def __init__(self, autoencoder: VideoAutoencoder, adversarial, videos: torch.Tensor):
        self.autoencoder, self.adversarial, self.videos = autoencoder, adversarial, videos

    def modules(self):
        return {"video_decoder": self.autoencoder, "adversarial": self.adversarial}

    def param_groups(self):
        return {"main": self.autoencoder.decoder_parameters(),
                "discriminator": list(self.adversarial.discriminator.parameters())}

    def ema_modules(self):
        return []

    def num_examples(self):
        return len(self.videos)

    def batch(self, indices, device):
        return {"x": parts.to_model(self.videos[indices]).to(device)}

    def losses(self, batch, random, step):
        x = batch["x"]
        with torch.no_grad():
            z = posterior_draw(self.autoencoder.image.encode(x.flatten(0, 1)), random)
        reconstruction = self.autoencoder.decode(z.unflatten(0, x.shape[:2]))
        rec = (x - reconstruction.float()).abs().mean()
        logs = {"l1": float(rec.detach()), "loss": float(rec.detach())}
        if not self.adversarial.active(step):
            return {"main": rec}, logs
        as_volumes = (lambda v: v.transpose(1, 2))  # [B, C, T, H, W] for the 3D discriminator
        return with_adversarial(self.adversarial, as_volumes(x), as_volumes(reconstruction), step,
                                self.autoencoder.last_layer(), rec, rec, logs)

    def finalize(self):
        pass  # the latent statistics are the image autoencoder's: the diffusion model was trained on them

    @torch.no_grad()
    def preview(self, step, out_dir: Path):
        x = parts.to_model(self.videos[:8]).to(next(self.autoencoder.parameters()).device)
        reconstruction = self.autoencoder.decode_latent(self.autoencoder.encode_latent(x))
        export_videos(out_dir, torch.cat([x, reconstruction.float().clamp(-1, 1)]).cpu())


def decoder_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> DecoderStage:
    videos, _ = _data(cfg)
    image = load_frozen_first_stage(parts.build_first_stage(cfg), run_dir, device)
    training = cfg.modality.video_decoder
    autoencoder = VideoAutoencoder(image, **training.temporal).to(device)
    autoencoder.train()
    adversarial = instantiate(training.adversarial)
    check_clip_fits(adversarial.discriminator, videos.shape[1:])
    return DecoderStage(autoencoder, adversarial, videos)


def check_clip_fits(discriminator, clip_shape) -> None:
    """A 3D PatchGAN's kernels span frames too: clips shorter than its stack can see stop with one line."""
    frames, channels, height, width = clip_shape
    try:
        with torch.no_grad():
            discriminator(torch.zeros(1, channels, frames, height, width))
    except RuntimeError as error:
        raise ConfigError(f"modality.video_decoder.adversarial.discriminator: its layers need longer clips than "
                          f"data.num_frames={frames} ({error}); use fewer layers or more frames") from None
