"""Build the shape models' parts from a run config: data, class conditioner, denoisers, reference sets.

Training (``*_task.py``) and sampling (``*_pipeline.py``) both build through here, so a run directory's
``config.yaml`` is all that is needed to rebuild its models.
"""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.shape.pointcloud_vae import PointCloudVAE
from modalities.shape.sdf_vae import SDFAutoencoder
from shared.conditioning.conditioners import ClassLabelEncoder
from shared.diffusion.denoiser import Denoiser
from shared.training.checkpoint import load_frozen_first_stage
from shared.training.stages import as_condition


def load_shapes(cfg: DictConfig, **overrides) -> tuple[dict, list[str]]:
    """The configured dataset in memory (``materialize()``: points, labels[, sdf_points, sdf]) and its
    class names. ``overrides`` (e.g. split, num_samples) apply where the dataset config has the key."""
    kept = {k: v for k, v in overrides.items() if k in cfg.data}
    dataset = instantiate(cfg.data, **kept)
    return dataset.materialize(), list(dataset.label_names)


def dataset_label_names(cfg: DictConfig) -> list[str]:
    """Class names of the configured dataset, without loading its shapes."""
    return list(instantiate(cfg.data).label_names)


def class_indices(labels: torch.Tensor, label_names: list[str]) -> torch.Tensor:
    """Dataset labels as label-encoder indices: shapes without a class (−1) get the null class."""
    return torch.where(labels < 0, len(label_names), labels)


def build_label_encoder(cfg: DictConfig, num_classes: int) -> ClassLabelEncoder:
    """``modality.conditioner`` (a ClassLabelEncoder partial) for the dataset's ``num_classes``."""
    encoder = instantiate(cfg.modality.conditioner)(num_classes=num_classes)
    if not isinstance(encoder, ClassLabelEncoder):
        raise TypeError(f"modality.conditioner must build a ClassLabelEncoder, got {type(encoder)}")
    return encoder


def make_denoiser(cfg: DictConfig, backbone) -> Denoiser:
    """``backbone`` on the run's schedule and parameterisation."""
    return Denoiser(backbone, instantiate(cfg.schedule), instantiate(cfg.parameterization))


def parse_labels(prompt: str | None, num_samples: int, label_names: list[str]) -> torch.Tensor:
    """Class of each sample: ``prompt`` names one (``torus`` or its index); None cycles through all."""
    if not label_names:  # an unlabelled folder: the null class, i.e. unconditional sampling
        if prompt is not None:
            raise ValueError(f"prompt={prompt!r}: this dataset has no classes")
        return torch.zeros(num_samples, dtype=torch.long)  # index 0 = num_classes = the null class
    if prompt is None:
        return torch.arange(num_samples) % len(label_names)
    if prompt in label_names:
        return torch.full((num_samples,), label_names.index(prompt))
    if prompt.isdigit() and int(prompt) < len(label_names):
        return torch.full((num_samples,), int(prompt))
    raise ValueError(f"prompt={prompt!r}: not a class of this dataset (known: {', '.join(label_names)})")


def label_conditions(encoder: ClassLabelEncoder, labels: torch.Tensor, device):
    """(conditional, null) condition objects for classifier-free guidance."""
    return (as_condition(encoder(labels.to(device))), as_condition(encoder.null(len(labels)).to(device)))


def build_vae(cfg: DictConfig, run_dir: Path | None = None, device="cpu") -> PointCloudVAE:
    vae = instantiate(cfg.autoencoder, num_points=cfg.data.num_points)
    return load_frozen_first_stage(vae, run_dir, device) if run_dir is not None else vae


def build_global_denoiser(cfg: DictConfig, vae: PointCloudVAE, label_encoder):
    return make_denoiser(cfg, instantiate(cfg.backbone.global_prior)(dim=vae.global_dim, cond_dim=label_encoder.dim))


def build_point_denoiser(cfg: DictConfig, vae: PointCloudVAE, label_encoder):
    backbone = instantiate(cfg.backbone.point_prior)(point_dim=vae.point_dim, cond_dim=vae.global_dim + label_encoder.dim)
    return make_denoiser(cfg, backbone)


def point_condition(z0: torch.Tensor, label_encoder, labels: torch.Tensor) -> torch.Tensor:
    """The point prior's condition: [normalised z₀, class embedding]."""
    return torch.cat([z0, label_encoder(labels.to(z0.device)).to(z0.dtype)], dim=-1)


def build_sdf_autoencoder(cfg: DictConfig, run_dir: Path | None = None, device="cpu") -> SDFAutoencoder:
    autoencoder = instantiate(cfg.autoencoder)
    return load_frozen_first_stage(autoencoder, run_dir, device) if run_dir is not None else autoencoder


def build_sdf_denoiser(cfg: DictConfig, autoencoder: SDFAutoencoder, label_encoder):
    return make_denoiser(cfg, instantiate(cfg.backbone)(dim=autoencoder.latent_channels, cond_dim=label_encoder.dim))
