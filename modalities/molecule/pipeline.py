"""`mldm sample` / `mldm evaluate` for molecules: atom counts from the training histogram (EDM), latents
from the zero-CoM diffusion prior (with CFG on properties when the run is conditional), decoded by the
autoencoder; EDM's stability and RDKit validity / uniqueness / novelty on the result or on the data."""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from modalities.molecule.components import (PropertyCondition, build_autoencoder, build_denoiser, load_molecules,
                                            zero_com)
from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.data import atom_count_distribution, sample_atom_counts
from modalities.molecule.fragments import (FragmentInpainting, atom_counts_above, fragment_latents, place_fragment,
                                           read_fragment)
from modalities.molecule.graphs import PackedMolecules, fully_connected_edges
from modalities.molecule.metrics import evaluate_molecules, training_smiles
from modalities.molecule.export import export_molecule_samples, load_molecule_samples
from shared.diffusion.draws import ItemGenerators
from shared.generation.chain import chain_trajectory
from shared.generation.generate import generate, sample_latent
from shared.generation.likelihood import NLLTerm
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
    export_molecule_samples(out_dir, torch.cat([original, decoded.positions]),
                           torch.cat([part.atom_type, decoded.atom_logits.argmax(1)]), torch.cat([counts, counts]),
                           records)


class MoleculePipeline:
    sampling_options = ("partial",)  # a fragment to keep

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

    def _sizes_and_properties(self, num_samples: int, prompt: str | None, generators: ItemGenerators,
                              min_atoms: int = 1):
        """Atom counts from the training histogram (sizes of at least ``min_atoms``); for a conditional
        run without a prompt, (count, property) pairs of random training molecules, as EDM samples
        p(n, c) from the data."""
        values = parse_property_prompt(prompt, self.condition.names, num_samples)
        fixed = OmegaConf.select(self.cfg, "modality.fragment.num_atoms") if min_atoms > 1 else None  # runs before the key
        if fixed is not None and fixed < min_atoms:
            raise ValueError(f"modality.fragment.num_atoms={fixed}: the fragment in partial={self.cfg.partial} "
                             f"already has {min_atoms - 1} atoms")
        distribution = atom_count_distribution(self.training)
        if fixed is None and min_atoms > 1:  # raises when no training molecule is large enough
            distribution = atom_counts_above(distribution, min_atoms - 1, self.cfg.partial)
        if self.condition.names and values is None:
            pool = torch.nonzero(self.training.num_atoms >= min_atoms).squeeze(1)
            if not len(pool):  # only with a fixed size: properties come from molecules above the fragment
                atom_counts_above(distribution, min_atoms - 1, self.cfg.partial)
            picks = pool[generators.each(lambda g: torch.randint(len(pool), (1,), generator=g))]
            sizes = self.training.num_atoms[picks] if fixed is None else torch.full((num_samples,), int(fixed))
            return sizes, self.condition.selected(self.training.properties[picks])
        if fixed is not None:
            return torch.full((num_samples,), int(fixed)), values
        return generators.each(lambda g: sample_atom_counts(distribution, 1, g)), values

    def _fragment(self) -> dict | None:
        """``partial=FILE``: the fragment to keep (positions, types, latent rows), or None."""
        if not self.cfg.get("partial"):
            return None
        positions, atom_types = read_fragment(self.cfg.partial, self.autoencoder.elements)
        return {"positions": positions, "atom_types": atom_types,
                "latents": fragment_latents(self.autoencoder, positions, atom_types)}

    @torch.no_grad()
    def sample(self, num_samples: int, prompt: str | None = None, seed: int = 0, steps: int | None = None) -> dict:
        fragment = self._fragment()
        draw = functools.partial(self._draw, prompt=prompt, steps=steps or self.cfg.steps, fragment=fragment)
        result = generate(draw, num_samples, seed, self.cfg.get("batch_size"))
        return {**result, "seed": seed}

    def _draw(self, indices: list[int], generators: ItemGenerators, prompt, steps, fragment) -> dict:
        """Molecules ``indices``: sizes (and properties) from the data, latents by the zero-CoM prior, decoded."""
        num_samples = len(indices)
        fragment_atoms = len(fragment["positions"]) if fragment else 0
        sizes, values = self._sizes_and_properties(num_samples, prompt, generators, min_atoms=fragment_atoms + 1)
        batch = torch.repeat_interleave(torch.arange(num_samples), sizes).to(self.device)
        space = zero_com(batch, num_samples)
        properties = self.condition.normalized(values) if values is not None else None
        cond = MoleculeCondition(batch, fully_connected_edges(batch, num_samples),
                                 properties.to(self.device) if properties is not None else None)
        wrap = None
        if fragment:  # the first K rows of every molecule are the fragment's
            offsets = torch.cumsum(sizes, 0) - sizes
            known_rows = (torch.arange(len(batch)) - offsets[batch.cpu()] < fragment_atoms).to(self.device)
            wrap = functools.partial(FragmentInpainting, known=fragment["latents"].repeat(num_samples, 1),
                                     known_rows=known_rows, batch=batch, num_molecules=num_samples,
                                     schedule=self.denoiser.schedule, generator=generators)
        x_T = space.randn_like(torch.zeros(int(sizes.sum()), 3 + self.autoencoder.latent_features,
                                           device=self.device), generators)
        trajectory = chain_trajectory(self.cfg, indices, rows=int(sizes[0]))
        z = sample_latent(self.cfg, self.denoiser, x_T, generators, steps, cond=cond, uncond=cond.unconditional(),
                          space=space, wrap=wrap, callback=trajectory)
        positions, atom_types = decode_atoms(self.autoencoder, z, batch, num_samples)
        kept, rmsd = None, None
        if fragment:
            positions, atom_types, rmsd = place_fragment(positions, atom_types, batch, known_rows,
                                                         fragment["positions"].to(self.device),
                                                         fragment["atom_types"].to(self.device), num_samples)
            kept, rmsd = {"fragment": str(self.cfg.partial), "fragment_atoms": fragment_atoms}, rmsd.cpu().tolist()
        first = torch.zeros(int(sizes[0]), dtype=torch.long, device=self.device)
        states = trajectory.frames() if trajectory is not None else []
        frames = [decode_atoms(self.autoencoder, x.to(self.device), first, 1)[0].cpu() for x in states]
        return {"positions": positions.cpu(), "atom_types": atom_types.cpu(), "num_atoms": sizes,
                "properties": values, "chain": torch.stack(frames) if frames else None,
                "fragment": kept, "fragment_rmsd": rmsd}

    def export(self, result: dict, out_dir: Path):
        records = [{"seed": result["seed"], "index": i} for i in range(len(result["num_atoms"]))]
        fragment = result.get("fragment") or {}
        for record, rmsd in zip(records, result.get("fragment_rmsd") or []):
            record.update(fragment=fragment["fragment"], fragment_atoms=fragment["fragment_atoms"],
                          fragment_rmsd=round(rmsd, 4))
        if result["properties"] is not None:
            for record, values in zip(records, result["properties"].tolist()):
                record["properties"] = dict(zip(self.condition.names, values))
        export_molecule_samples(out_dir, result["positions"], result["atom_types"], result["num_atoms"], records,
                               chain=result["chain"], grid_max=self.cfg.modality.export.grid_molecules)

    def reference_smiles(self) -> set[str]:
        """Novelty's reference: the training molecules through the same bond inference (EDM)."""
        everything = self.training.gather(torch.arange(len(self.training)))
        return training_smiles(everything.pos, everything.atom_type, everything.batch)

    def evaluate_samples(self, out_dir: Path) -> dict:
        samples = load_molecule_samples(out_dir)
        return evaluate_molecules(samples["positions"], samples["atom_types"], samples["batch"],
                                  reference_smiles=self.reference_smiles(), num_molecules=len(samples["num_atoms"]))

    @torch.no_grad()
    def nll_terms(self, split: str, num_samples: int) -> list[NLLTerm]:
        """The first ``num_samples`` molecules of ``split`` encoded (posterior mean) in the zero-CoM space, with
        their properties when the run is conditional; dimensions are (n − 1)·3 + n·k per molecule."""
        molecules = self.training if split == "train" else load_molecules(self.cfg, split=split)
        part = molecules.gather(torch.arange(min(num_samples, len(molecules)))).to(self.device)
        edges = fully_connected_edges(part.batch, part.num_molecules)
        posterior = self.autoencoder.encode(part.atom_type, part.pos, part.batch, edges, part.num_molecules)
        z = self.autoencoder.normalize_latent(posterior.mean).float()
        return [NLLTerm("diffusion", self.denoiser, z, self.condition.condition(part, self.device),
                        space=zero_com(part.batch, part.num_molecules))]

    def evaluate_data(self, split: str, num_samples: int) -> dict:
        """The papers' "Data" row: the metrics of every molecule of ``split`` (``num_samples`` is not
        used: the row is over the whole split); novelty is not defined for the data itself."""
        molecules = self.training if split == "train" else load_molecules(self.cfg, split=split)
        everything = molecules.gather(torch.arange(len(molecules)))
        metrics = evaluate_molecules(everything.pos, everything.atom_type, everything.batch,
                                     num_molecules=len(molecules))
        return {**metrics, "split": split}
