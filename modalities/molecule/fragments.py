"""Fragment-conditioned generation: the given atoms are kept, the rest of the molecule is generated, by
inpainting (Song et al. 2021, App. I) in GeoLDM's latent space.

The fragment is encoded on its own; its latent rows are the known rows of every sampled molecule
(the first K rows of each), the other rows are generated. Translations are the catch: the latents
live in the zero-CoM subspace of the *whole* molecule, where the fragment's place depends on atoms
not generated yet. Only the fragment's shape is given, so its frame floats: at every step the known
rows are replaced by the fragment's noised latents placed at the known rows' current centre. That
replacement keeps each molecule's centre of mass, so x_t never leaves the subspace the sampler and
the denoiser work in (``shared.diffusion.guidance.Inpainting`` replaces rows in a fixed frame, which here
would drag the molecule's CoM). Orientation is not free: the fragment's latents are never rotated,
so the molecule is generated in the fragment's own orientation.

After decoding, the known rows are replaced by the given atoms themselves (types and positions,
translated into the generated molecule's frame); ``fragment_rmsd`` says how far the decoder had put
them (Å), a check that the generated part was built around the fragment as given.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch_geometric.utils import scatter

from shared.io.data_errors import data_error
from modalities.molecule.autoencoder import POSITION_DIMS
from modalities.molecule.files import MoleculeFiles
from modalities.molecule.graphs import fully_connected_edges
from shared.diffusion.forward_process import diffuse
from shared.diffusion.spaces import ZeroCoMSpace


def read_fragment(path: str | Path, elements: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The one molecule in ``path`` (.xyz / .sdf / .mol) -> (positions Å [K, 3], atom types [K]). A missing
    file raises ``FileNotFoundError``, a bad one (unreadable, unknown elements, NaN/inf, not exactly one
    molecule) ``DataError``, each naming the file."""
    fragments = MoleculeFiles(path, elements=elements)
    if len(fragments) != 1:
        raise data_error(f"partial={path}", f"holds {len(fragments)} molecules; give one fragment")
    return fragments.positions.float(), fragments.atom_types.long()


def atom_counts_above(distribution: dict, fragment_atoms: int, partial: str) -> dict:
    """The training size histogram restricted to molecules larger than the fragment."""
    kept = [(n, c) for n, c in zip(distribution["num_atoms"], distribution["count"]) if n > fragment_atoms]
    if not kept:
        raise data_error(f"partial={partial}", f"the fragment has {fragment_atoms} atoms; no training molecule is "
                         f"larger (at most {max(distribution['num_atoms'])}), set modality.fragment.num_atoms")
    return {"num_atoms": [n for n, _ in kept], "count": [c for _, c in kept]}


def centre_per_molecule(values: torch.Tensor, batch: torch.Tensor, num_molecules: int) -> torch.Tensor:
    return scatter(values, batch, dim=0, dim_size=num_molecules, reduce="mean")


class FragmentInpainting:
    """Denoiser wrapper: known rows (``known_rows`` bool [n]) hold ``known`` [K_total, 3 + k], whose
    position part has zero mean per molecule; they float with their own centre (see the module doc)."""

    def __init__(self, denoiser, known: torch.Tensor, known_rows: torch.Tensor, batch: torch.Tensor,
                 num_molecules: int, schedule, generator: torch.Generator | None = None):
        self.denoiser, self.known, self.known_rows = denoiser, known, known_rows
        self.known_batch, self.num_molecules = batch[known_rows], num_molecules
        self.fragment_space = ZeroCoMSpace(batch=self.known_batch, num_items=num_molecules)
        self.schedule, self.generator = schedule, generator

    def _placed(self, latent: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """``latent`` (zero-mean positions) moved to the centre of the known rows of ``current``."""
        centre = centre_per_molecule(current[self.known_rows, :POSITION_DIMS], self.known_batch, self.num_molecules)
        return torch.cat([latent[:, :POSITION_DIMS] + centre[self.known_batch], latent[:, POSITION_DIMS:]], dim=1)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        noise = self.fragment_space.randn_like(self.known, self.generator)
        noised = diffuse(self.schedule, self.known, t[self.known_rows], noise)
        x_t = x_t.clone()
        x_t[self.known_rows] = self._placed(noised, x_t)
        x0 = self.denoiser(x_t, t, cond).clone()
        x0[self.known_rows] = self._placed(self.known, x0)
        return x0


@torch.no_grad()
def fragment_latents(autoencoder, positions: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
    """The fragment's normalised latent rows [K, 3 + k] (posterior mode, encoded on its own)."""
    device = next(autoencoder.parameters()).device
    batch = torch.zeros(len(positions), dtype=torch.long, device=device)
    posterior = autoencoder.encode(atom_types.to(device), positions.to(device), batch,
                                   fully_connected_edges(batch, 1), 1)
    return autoencoder.normalize_latent(posterior.mode())


def place_fragment(positions: torch.Tensor, atom_types: torch.Tensor, batch: torch.Tensor, known_rows: torch.Tensor,
                   given_positions: torch.Tensor, given_types: torch.Tensor,
                   num_molecules: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoded molecules with their known rows replaced by the given atoms, translated onto the decoded
    fragment's centre -> (positions, atom types, per-molecule RMSD of the decoded fragment to the given)."""
    known_batch = batch[known_rows]
    given = given_positions - given_positions.mean(0)
    centre = centre_per_molecule(positions[known_rows], known_batch, num_molecules)
    placed = given.repeat(num_molecules, 1) + centre[known_batch]
    squared = centre_per_molecule((positions[known_rows] - placed).square().sum(1, keepdim=True), known_batch,
                                  num_molecules)
    positions, atom_types = positions.clone(), atom_types.clone()
    positions[known_rows], atom_types[known_rows] = placed, given_types.repeat(num_molecules)
    return positions, atom_types, squared.squeeze(1).sqrt()
