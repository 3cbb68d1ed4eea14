"""Build the image model's parts from a run config: data, first stage, conditioner, denoiser.

Training (``task.py``) and sampling (``pipeline.py``) both build through here, so a run directory's
``config.yaml`` is all that is needed to rebuild its model.
"""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.image.data import Shapes2D, caption_for_label, uint8_to_float
from shared.conditioning.conditioners import ClassLabelEncoder, TextEncoder
from shared.diffusion.denoiser import Denoiser


def load_images(dataset) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """A dataset in memory: uint8 images [N, 3, H, W], captions, labels (−1 where absent)."""
    if isinstance(dataset, Shapes2D):
        images, labels = dataset.materialize()
        return images, [caption_for_label(int(label)) for label in labels], labels
    if hasattr(dataset, "arrays"):   # a set rendered in bulk (primitive_views): no per-item round trip
        return dataset.arrays()
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([((item["image"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) for item in items])
    return images, [item.get("caption", "") for item in items], torch.tensor([item.get("label", -1) for item in items])


def build_dataset(cfg: DictConfig, **overrides):
    """``cfg.data`` with those ``overrides`` its config has keys for (``num_samples`` and ``split`` exist for
    shapes2d, not for an image folder, which is all of its files)."""
    return instantiate(cfg.data, **{k: v for k, v in overrides.items() if k in cfg.data})


def caption_vocabulary(dataset, labelled: bool) -> list[str]:
    """The distinct prompts of a dataset, sorted: class indices for a label-conditioned run, else captions
    (an image folder's from its caption files, without decoding its images)."""
    if labelled:
        _, _, labels = load_images(dataset)
        return sorted({str(int(label)) for label in labels})
    captions = dataset.captions if hasattr(dataset, "captions") else load_images(dataset)[1]
    return sorted(set(captions))


def to_model(images: torch.Tensor) -> torch.Tensor:
    return uint8_to_float(images) if images.dtype == torch.uint8 else images


def build_first_stage(cfg: DictConfig):
    return instantiate(cfg.autoencoder) if cfg.get("autoencoder") else None


def build_conditioner(cfg: DictConfig):
    conditioner = instantiate(cfg.modality.conditioner)
    if not isinstance(conditioner, (TextEncoder, ClassLabelEncoder)):
        raise TypeError(f"modality.conditioner must build a TextEncoder or ClassLabelEncoder, got {type(conditioner)}")
    return conditioner


def latent_shape(cfg: DictConfig, first_stage) -> tuple[int, int]:
    """(channels, spatial size) of what the denoiser sees."""
    size = cfg.data.size
    if first_stage is None:
        return 3, size
    return first_stage.latent_channels, size // first_stage.factor


def build_denoiser(cfg: DictConfig, first_stage, conditioner) -> Denoiser:
    channels, size = latent_shape(cfg, first_stage)
    backbone = instantiate(cfg.backbone)(in_channels=channels, sample_size=size, cond_dim=conditioner.dim)
    return Denoiser(backbone, instantiate(cfg.schedule), instantiate(cfg.parameterization))
