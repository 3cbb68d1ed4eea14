"""Build the video model's parts from a run config, for training (``task.py``) and sampling (``pipeline.py``).

The image parts come from the run's ``autoencoder``/``backbone`` configs exactly as the image modality builds
them (``modalities.image.components``); ``modality.temporal`` says how they are aligned in time.
"""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.image.backbones import DiTBackbone, UNetBackbone
from modalities.image.components import build_conditioner, build_first_stage, to_model
from modalities.video.autoencoder import FrameByFrame, VideoAutoencoder, per_frame
from modalities.video.backbones import VideoDiTBackbone, VideoUNetBackbone
from modalities.video.data import MovingShapes
from shared.diffusion.denoiser import Denoiser
from shared.training.checkpoint import load_frozen_first_stage, load_stage_weights
from shared.training.stage_spec import finished

__all__ = ["build_conditioner", "build_first_stage", "to_model", "load_videos", "frames_of", "build_dataset",
           "build_image_denoiser", "build_video_denoiser", "load_decoder", "latent_shape", "per_frame"]

VIDEO_BACKBONES = {UNetBackbone: VideoUNetBackbone, DiTBackbone: VideoDiTBackbone}


def build_dataset(cfg: DictConfig, **overrides):
    """``cfg.data`` with those ``overrides`` its config has keys for."""
    return instantiate(cfg.data, **{k: v for k, v in overrides.items() if k in cfg.data})


def load_videos(dataset) -> tuple[torch.Tensor, list[str]]:
    """A dataset in memory: uint8 videos [N, T, 3, H, W] and their captions."""
    if isinstance(dataset, MovingShapes):
        data = dataset.materialize()
        return torch.from_numpy(data["videos"]).permute(0, 1, 4, 2, 3), data["captions"]
    items = [dataset[i] for i in range(len(dataset))]
    videos = torch.stack([((item["video"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) for item in items])
    return videos, [item.get("caption", "") for item in items]


def frames_of(videos: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Every frame as an image [N·T, 3, H, W], with its video's caption (the image stages' data)."""
    frames = videos.shape[1]
    return videos.flatten(0, 1), [caption for caption in captions for _ in range(frames)]


def latent_shape(cfg: DictConfig, first_stage) -> tuple[int, int]:
    return first_stage.latent_channels, cfg.data.size // first_stage.factor


def build_image_denoiser(cfg: DictConfig, first_stage, conditioner) -> Denoiser:
    channels, size = latent_shape(cfg, first_stage)
    backbone = instantiate(cfg.backbone)(in_channels=channels, sample_size=size, cond_dim=conditioner.dim)
    return Denoiser(backbone, instantiate(cfg.schedule), instantiate(cfg.parameterization))


def build_video_denoiser(cfg: DictConfig, image: Denoiser) -> Denoiser:
    """``image``'s backbone with temporal layers (``modality.temporal``); the video schedule is
    ``modality.temporal.schedule`` where set (a shifted one for the larger video latents), else the image's."""
    temporal = cfg.modality.temporal
    wrap = VIDEO_BACKBONES.get(type(image.backbone))
    if wrap is None:
        raise TypeError(f"backbone {type(image.backbone).__name__}: video supports "
                        f"{', '.join(t.__name__ for t in VIDEO_BACKBONES)}")
    backbone = wrap(image.backbone, layers=list(temporal.layers), heads=temporal.heads, max_frames=temporal.max_frames,
                    train_spatial=temporal.train_spatial, context_frames=temporal.context_frames > 0,
                    prompt_tokens=temporal.get("prompt_tokens", False),
                    frame_positions=temporal.get("frame_positions", "sinusoidal"), span=temporal.get("span", "frames"),
                    frame_embedding=temporal.get("frame_embedding", False),
                    text_whitening=temporal.get("text_whitening", False))
    schedule = instantiate(temporal.schedule) if temporal.get("schedule") else image.schedule
    return Denoiser(backbone, schedule, image.parameterization)


def load_decoder(cfg: DictConfig, run_dir, device) -> VideoAutoencoder | FrameByFrame:
    """The run's trained first stage: the fine-tuned video decoder once the ``decoder`` stage has finished, else
    the image autoencoder frame by frame."""
    image = build_first_stage(cfg)
    load_frozen_first_stage(image, run_dir, device)
    if not finished(run_dir, "decoder"):
        return FrameByFrame(image).to(device).eval()
    video = VideoAutoencoder(image, **cfg.modality.video_decoder.temporal)
    load_stage_weights(run_dir, "decoder", {"video_decoder": video})
    return video.to(device).eval().requires_grad_(False)
