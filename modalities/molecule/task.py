"""`mldm train` for molecules (GeoLDM, Xu et al. 2023, as two stages): the equivariant autoencoder
into per-atom latents [z_x, z_h], then latent diffusion over them with zero-CoM noise on z_x
(Hoogeboom et al. 2022, §3.2), optionally conditioned on properties with CFG dropout.

Noise is drawn per atom row from the step's randomness, so resume is exact; with several processes
each rank draws its own rows (molecules differ in size), so runs are not bit-identical across world
sizes as the fixed-shape modalities are.
"""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.molecule.autoencoder import MoleculeAutoencoder, molecule_autoencoder_loss
from modalities.molecule.components import (PropertyCondition, build_autoencoder, build_denoiser, load_molecules,
                                            zero_com)
from modalities.molecule.graphs import MoleculeBatch, PackedMolecules, fully_connected_edges
from shared.training.latent_diffusion import LatentDiffusionStage
from shared.training.stages import FirstStageTask


@torch.no_grad()
def encode_all(autoencoder: MoleculeAutoencoder, molecules: PackedMolecules, device, batch_size: int = 512):
    """Posterior mean and std of every atom of ``molecules`` (rows in the packed order), and the
    molecule index of each row."""
    means, stds = [], []
    for start in range(0, len(molecules), batch_size):
        part = molecules.gather(torch.arange(start, min(start + batch_size, len(molecules)))).to(device)
        edges = fully_connected_edges(part.batch, part.num_molecules)
        posterior = autoencoder.encode(part.atom_type, part.pos, part.batch, edges, part.num_molecules)
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    rows_batch = torch.repeat_interleave(torch.arange(len(molecules)), molecules.num_atoms)
    return torch.cat(means), torch.cat(stds), rows_batch


def draw_latent(mean: torch.Tensor, std: torch.Tensor, molecules: MoleculeBatch, random) -> torch.Tensor:
    """z = mean + std·ε with ε's position part in the zero-CoM subspace (the posterior's own support)."""
    noise = zero_com(molecules.batch, molecules.num_molecules).project(random.randn_like(mean))
    return mean + std * noise


class MoleculeAutoencoderStage(FirstStageTask):
    """The equivariant autoencoder: atom types (+ charges) and positions reconstructed from z drawn with
    zero-CoM noise, + weighted KL."""

    def __init__(self, autoencoder: MoleculeAutoencoder, molecules: PackedMolecules, kl_weight: float,
                 charge_weight: float = 1.0, preview=None):
        super().__init__(autoencoder)
        self.molecules, self.kl_weight = molecules, kl_weight
        self.charge_weight, self.preview_fn = charge_weight, preview

    def num_examples(self):
        return len(self.molecules)

    def batch(self, indices, device):
        molecules = self.molecules.gather(indices).to(device)
        return {"molecules": molecules, "edges": fully_connected_edges(molecules.batch, molecules.num_molecules)}

    def losses(self, batch, random, step):
        molecules, edges, model = batch["molecules"], batch["edges"], self.autoencoder
        posterior = model.encode(molecules.atom_type, molecules.pos, molecules.batch, edges, molecules.num_molecules)
        z = draw_latent(posterior.mean, posterior.std, molecules, random)
        reconstruction = model.decode(z, molecules.batch, edges, molecules.num_molecules)
        charges = model.charge_targets(molecules.atom_type) if model.include_charges else None
        terms = molecule_autoencoder_loss(molecules.atom_type, molecules.pos, molecules.batch, reconstruction,
                                          posterior, self.kl_weight, charges, self.charge_weight)
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss"] = logs.pop("total")
        return {"main": terms["total"]}, logs

    @torch.no_grad()
    def finalize(self):
        """Latent statistics from posterior samples of the whole training set (what the prior sees)."""
        device = next(self.autoencoder.parameters()).device
        mean, std, rows_batch = encode_all(self.autoencoder, self.molecules, device)
        noise = zero_com(rows_batch, len(self.molecules)).project(
            torch.randn(mean.shape, generator=torch.Generator().manual_seed(0)))
        self.autoencoder.estimate_latent_statistics((mean + std * noise).to(device), rows_batch.to(device))

    @torch.no_grad()
    def preview(self, step, out_dir: Path):
        if self.preview_fn is not None:
            self.preview_fn(self.autoencoder, self.molecules, out_dir)


class MoleculeLatents:
    """The molecule prior's data (``shared.training.latent_diffusion.LatentData``): each atom's posterior,
    drawn with zero-CoM noise and normalised, in the molecules' ZeroCoMSpace, and the molecules' properties,
    which CFG dropout marks absent, when the run is conditional."""

    def __init__(self, autoencoder: MoleculeAutoencoder, molecules: PackedMolecules, condition: PropertyCondition,
                 device):
        self.autoencoder, self.molecules, self.condition_of = autoencoder, molecules, condition
        autoencoder.to(device).eval().requires_grad_(False)
        self.mean, self.std, _ = encode_all(autoencoder, molecules, device)

    def num_examples(self):
        return len(self.molecules)

    def batch(self, indices, device):
        molecules = self.molecules.gather(indices)
        return {"molecules": molecules.to(device), "mean": self.mean[molecules.rows].to(device),
                "std": self.std[molecules.rows].to(device)}

    def draw(self, batch, random):
        molecules = batch["molecules"]
        space = zero_com(molecules.batch, molecules.num_molecules)
        return self.autoencoder.normalize_latent(draw_latent(batch["mean"], batch["std"], molecules, random)), space

    def condition(self, batch, z, drop):
        cond = self.condition_of.condition(batch["molecules"], z.device)
        return drop(cond, None) if cond.properties is not None else cond  # the properties marked absent

    def trained_modules(self):
        return {}


def autoencoder_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> MoleculeAutoencoderStage:
    from modalities.molecule.pipeline import export_reconstructions

    molecules = load_molecules(cfg, split="train")
    training = cfg.modality.autoencoder_training
    return MoleculeAutoencoderStage(build_autoencoder(cfg), molecules, training.kl_weight,
                                    training.charge_weight, preview=export_reconstructions)


def diffusion_stage(cfg: DictConfig, run_dir: Path, device: torch.device) -> LatentDiffusionStage:
    from modalities.molecule.pipeline import MoleculePipeline

    molecules = load_molecules(cfg, split="train")
    autoencoder = build_autoencoder(cfg, run_dir, device)
    denoiser = build_denoiser(cfg, autoencoder)

    def preview(task: LatentDiffusionStage, out_dir: Path):
        pipeline = MoleculePipeline(cfg, run_dir, device, denoiser=task.denoiser, autoencoder=autoencoder,
                                    training=molecules)
        pipeline.export(pipeline.sample(cfg.trainer.sample_count, seed=0, steps=cfg.trainer.sample_steps), out_dir)

    latents = MoleculeLatents(autoencoder, molecules, PropertyCondition(cfg, molecules), device)
    return LatentDiffusionStage(denoiser, latents, instantiate(cfg.loss), cfg_dropout=cfg.modality.cfg_dropout,
                                preview=preview)
