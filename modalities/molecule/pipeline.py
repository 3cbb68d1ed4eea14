"""`mldm sample` / `mldm evaluate` for molecules: atom counts from the training histogram (EDM), latents
from the zero-CoM diffusion prior (with CFG on properties when the run is conditional), decoded by the
autoencoder; EDM's stability and RDKit validity / uniqueness / novelty on the result or on the data."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from modalities.molecule.components import (PropertyCondition, build_autoencoder, build_denoiser, load_molecules,
                                            zero_com)
from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.data import atom_count_distribution, sample_atom_counts
from modalities.molecule.graphs import PackedMolecules, fully_connected_edges
from modalities.molecule.metrics import evaluate_molecules, training_smiles
from modalities.molecule.sample_dir import read_molecule_samples, write_molecule_samples
from shared.commands import guided_sampler
from shared.training.checkpoint import load_stage_weights


def parse_property_prompt(prompt: str | None, names: list[str], num_samples: int) -> torch.Tensor | None:
    """``prompt=alpha:75.2,gap:6.1`` (or, quoted for hydra, ``'prompt="alpha=75.2"'``) -> [num_samples,
    len(names)] raw values in the dataset's units; None: draw the properties from the data."""
    if prompt is None:
        return None
    if not names:
        raise ValueError(f"prompt={prompt!r}: this run is unconditional (modality.conditioning.properties is empty)")
    values = {}
    for item in prompt.split(","):
        key, sep, value = item.partition(":" if ":" in item else "=")
        try:
            values[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"prompt={prompt!r}: expected name:value pairs like {names[0]}:1.0")
    if sorted(values) != sorted(names):
        raise ValueError(f"prompt={prompt!r}: give exactly the run's properties {names}")
    return torch.tensor([[values[n] for n in names]] * num_samples)


def decode_atoms(autoencoder, z: torch.Tensor, batch: torch.Tensor,
                 num_molecules: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised latents -> (positions Å [n, 3], atom types [n])."""
    edges = fully_connected_edges(batch, num_molecules)
    decoded = autoencoder.decode(autoencoder.denormalize_latent(z), batch, edges, num_molecules)
    return decoded.positions.float(), decoded.atom_logits.argmax(1)


@torch.no_grad()
def export_reconstructions(autoencoder, molecules: PackedMolecules, out_dir: Path, count: int = 8):
    """Autoencoder preview: the first ``count`` training molecules, then their reconstructions (posterior mode)."""
    device = next(autoencoder.parameters()).device
    part = molecules.gather(torch.arange(min(count, len(molecules)))).to(device)
    edges = fully_connected_edges(part.batch, part.num_molecules)
    posterior = autoencoder.encode(part.atom_type, part.pos, part.batch, edges, part.num_molecules)
    decoded = autoencoder.decode(posterior.mode(), part.batch, edges, part.num_molecules)
    original = zero_com(part.batch, part.num_molecules).project(part.pos)
    counts = molecules.num_atoms[:part.num_molecules]
    records = [{"kind": "data"}] * len(counts) + [{"kind": "reconstruction"}] * len(counts)
    write_molecule_samples(out_dir, torch.cat([original, decoded.positions]),
                           torch.cat([part.atom_type, decoded.atom_logits.argmax(1)]), torch.cat([counts, counts]),
                           records)


class MoleculePipeline:
    def __init__(self, cfg: DictConfig, run_dir: Path | None, device: torch.device, denoiser=None,
                 autoencoder=None, training: PackedMolecules | None = None):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.training = training if training is not None else load_molecules(cfg, split="train")
        self.condition = PropertyCondition(cfg, self.training)
        if run_dir is None:
            return
        self.autoencoder = autoencoder if autoencoder is not None else build_autoencoder(cfg, run_dir, device)
        if denoiser is None:  # during training the preview passes the EMA denoiser in
            denoiser = build_denoiser(cfg, self.autoencoder).to(device).eval()
            load_stage_weights(run_dir, "diffusion", {"denoiser": denoiser})
        self.denoiser = denoiser

    def _sizes_and_properties(self, num_samples: int, prompt: str | None, generator: torch.Generator):
        """Atom counts from the training histogram; for a conditional run without a prompt, (count,
        property) pairs of random training molecules, as EDM samples p(n, c) from the data."""
        values = parse_property_prompt(prompt, self.condition.names, num_samples)
        if not self.condition.names or values is not None:
            sizes = sample_atom_counts(atom_count_distribution(self.training), num_samples, generator)
            return sizes, values
        picks = torch.randint(len(self.training), (num_samples,), generator=generator)
        return self.training.num_atoms[picks], self.condition.selected(self.training.properties[picks])

    @torch.no_grad()
    def sample(self, num_samples: int, prompt: str | None = None, seed: int = 0, steps: int | None = None) -> dict:
        if self.cfg.get("partial"):
            raise ValueError(f"partial={self.cfg.partial}: fragment-conditioned molecule generation is not "
                             f"implemented yet (shape completion works for point-cloud runs)")
        generator = torch.Generator().manual_seed(seed)
        sizes, values = self._sizes_and_properties(num_samples, prompt, generator)
        batch = torch.repeat_interleave(torch.arange(num_samples), sizes).to(self.device)
        space = zero_com(batch, num_samples)
        properties = self.condition.normalized(values) if values is not None else None
        cond = MoleculeCondition(batch, fully_connected_edges(batch, num_samples),
                                 properties.to(self.device) if properties is not None else None)
        sampler, guidance = guided_sampler(self.cfg, self.cfg.get("guidance_scale"))
        x_T = space.randn_like(torch.zeros(int(sizes.sum()), 3 + self.autoencoder.latent_features), generator)
        chain = []
        keep_chain = bool(self.cfg.modality.export.chain)
        callback = (lambda info: chain.append(info["x"][:int(sizes[0])])) if keep_chain else None
        z = sampler(guidance(self.denoiser, uncond=cond.unconditional()), x_T.to(self.device), self.denoiser.schedule,
                    steps or self.cfg.steps, space=space, generator=generator, cond=cond, callback=callback)
        positions, atom_types = decode_atoms(self.autoencoder, z, batch, num_samples)
        first = torch.zeros(int(sizes[0]), dtype=torch.long, device=self.device)
        frames = [decode_atoms(self.autoencoder, x0, first, 1)[0].cpu() for x0 in chain[::max(1, len(chain) // 40)]]
        return {"positions": positions.cpu(), "atom_types": atom_types.cpu(), "num_atoms": sizes, "seed": seed,
                "properties": values, "chain": torch.stack(frames) if frames else None}

    def export(self, result: dict, out_dir: Path):
        records = [{"seed": result["seed"], "index": i} for i in range(len(result["num_atoms"]))]
        if result["properties"] is not None:
            for record, values in zip(records, result["properties"].tolist()):
                record["properties"] = dict(zip(self.condition.names, values))
        write_molecule_samples(out_dir, result["positions"], result["atom_types"], result["num_atoms"], records,
                               chain=result["chain"], grid_max=self.cfg.modality.export.grid_molecules)

    def reference_smiles(self) -> set[str]:
        """Novelty's reference: the training molecules through the same bond inference (EDM)."""
        everything = self.training.gather(torch.arange(len(self.training)))
        return training_smiles(everything.pos, everything.atom_type, everything.batch)

    def evaluate_samples(self, out_dir: Path) -> dict:
        samples = read_molecule_samples(out_dir)
        return evaluate_molecules(samples["positions"], samples["atom_types"], samples["batch"],
                                  reference_smiles=self.reference_smiles(), num_molecules=len(samples["num_atoms"]))

    def evaluate_data(self, split: str, num_samples: int) -> dict:
        """The papers' "Data" row: the metrics of every molecule of ``split`` (``num_samples`` is not
        used: the row is over the whole split); novelty is not defined for the data itself."""
        molecules = self.training if split == "train" else load_molecules(self.cfg, split=split)
        everything = molecules.gather(torch.arange(len(molecules)))
        metrics = evaluate_molecules(everything.pos, everything.atom_type, everything.batch,
                                     num_molecules=len(molecules))
        return {**metrics, "split": split}
