"""Build the shape models' parts from a run config: data, class conditioner, denoisers, reference sets.

Training (``*_task.py``) and sampling (``*_pipeline.py``) both build through here, so a run directory's
``config.yaml`` is all that is needed to rebuild its models.
"""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from shared.conditioning.conditioners import ClassLabelEncoder
from shared.diffusion.denoiser import Denoiser
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
