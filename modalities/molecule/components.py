"""Build the molecule models' parts from a run config: data, graphs, autoencoder, denoiser, the
property condition. Training (``task.py``) and sampling (``pipeline.py``) both build through here, so
a run directory's ``config.yaml`` is all that is needed to rebuild its models."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.molecule.autoencoder import MoleculeAutoencoder
from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.data import normalize_properties, property_statistics
from modalities.molecule.graphs import MoleculeBatch, PackedMolecules, fully_connected_edges
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.spaces import ZeroCoMSpace
from shared.training.checkpoint import load_frozen_first_stage


def load_molecules(cfg: DictConfig, **overrides) -> PackedMolecules:
    """The configured dataset; ``overrides`` (e.g. split) apply where the data config has the key."""
    return instantiate(cfg.data, **{k: v for k, v in overrides.items() if k in cfg.data})


def zero_com(batch: torch.Tensor, num_molecules: int) -> ZeroCoMSpace:
    return ZeroCoMSpace(batch=batch, num_items=num_molecules)


def conditioning_properties(cfg: DictConfig) -> list[str]:
    """The properties the denoiser is conditioned on (``modality.conditioning.properties``; [] = none)."""
    return list(cfg.modality.conditioning.properties or [])


class PropertyCondition:
    """Per-molecule property values for the denoiser, normalised with the training set's mean / MAD
    (EDM's conditional models), and the graph they ride along with."""

    def __init__(self, cfg: DictConfig, training: PackedMolecules):
        self.names = conditioning_properties(cfg)
        unknown = [n for n in self.names if n not in training.property_names]
        if unknown:
            raise ValueError(f"modality.conditioning.properties: {unknown} not in the dataset's properties "
                             f"{list(training.property_names)}")
        self.columns = [training.property_names.index(n) for n in self.names]
        self.statistics = property_statistics(training) if self.names else {}

    def selected(self, dataset_properties: torch.Tensor) -> torch.Tensor:
        """[M, P_all] in the dataset's column order -> [M, len(names)] in ``names`` order."""
        return dataset_properties[:, self.columns]

    def normalized(self, values: torch.Tensor) -> torch.Tensor | None:
        """Raw values [M, len(names)] in ``names`` order -> normalised ones (None for an unconditional run)."""
        if not self.names:
            return None
        return normalize_properties(values.float(), self.statistics, self.names)

    def condition(self, molecules: MoleculeBatch, device) -> MoleculeCondition:
        """The graph (fully connected within each molecule, as EDM and GeoLDM) and the properties."""
        edges = fully_connected_edges(molecules.batch, molecules.num_molecules)
        properties = self.normalized(self.selected(molecules.properties))
        return MoleculeCondition(molecules.batch, edges, properties).to(device)


def build_autoencoder(cfg: DictConfig, run_dir: Path | None = None, device="cpu") -> MoleculeAutoencoder:
    autoencoder = instantiate(cfg.autoencoder)
    return load_frozen_first_stage(autoencoder, run_dir, device) if run_dir is not None else autoencoder


def build_denoiser(cfg: DictConfig, autoencoder: MoleculeAutoencoder) -> Denoiser:
    backbone = instantiate(cfg.backbone)(latent_features=autoencoder.latent_features,
                                         property_features=len(conditioning_properties(cfg)))
    return Denoiser(backbone, instantiate(cfg.schedule), instantiate(cfg.parameterization))
