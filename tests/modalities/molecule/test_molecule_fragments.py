"""Fragment-conditioned generation: the fragment's latents float with their own centre, so every state
the sampler and the denoiser see stays in the zero-CoM subspace, and the result keeps the fragment's
shape exactly; the decoded molecules hold the given atoms."""
from __future__ import annotations

import pytest
import torch

from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.dynamics import EGNNDynamics
from modalities.molecule.fragments import (FragmentInpainting, atom_counts_above, place_fragment,
                                           read_fragment)
from modalities.molecule.graphs import fully_connected_edges
from shared.diffusion.denoiser import Denoiser
from shared.errors import DataError
from shared.diffusion.samplers import sample_ddpm
from shared.diffusion.schedules import PolynomialSchedule
from shared.diffusion.spaces import ZeroCoMSpace

SIZES = [7, 9, 6]
FRAGMENT = 4
LATENT = 2


def layout():
    sizes = torch.tensor(SIZES)
    batch = torch.repeat_interleave(torch.arange(len(SIZES)), sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    known_rows = torch.arange(len(batch)) - offsets[batch] < FRAGMENT
    known = ZeroCoMSpace(batch=torch.zeros(FRAGMENT, dtype=torch.long)).randn_like(torch.zeros(FRAGMENT, 3 + LATENT),
                                                                                   torch.Generator().manual_seed(1))
    return batch, known_rows, known


def centred(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows[:, :3] - rows[:, :3].mean(0), rows[:, 3:]], dim=1)


def test_replacement_keeps_zero_com_and_the_fragment_shape():
    batch, known_rows, known = layout()
    space = ZeroCoMSpace(batch=batch)
    seen = []

    def denoiser(x_t, t, cond=None):
        seen.append(x_t)
        return space.project(0.5 * x_t + 0.1)

    wrapped = FragmentInpainting(denoiser, known.repeat(len(SIZES), 1), known_rows, batch, len(SIZES),
                                 PolynomialSchedule(), torch.Generator().manual_seed(0))
    x_t = space.randn_like(torch.zeros(len(batch), 3 + LATENT), torch.Generator().manual_seed(2))
    x0 = wrapped(x_t, torch.full((len(batch),), 0.3), None)
    for state in (seen[0], x0):
        assert torch.allclose(space.project(state), state, atol=1e-6)
    assert torch.equal(seen[0][~known_rows], x_t[~known_rows])  # the generated rows are left alone
    for m in range(len(SIZES)):
        rows = (batch == m) & known_rows
        assert torch.allclose(centred(x0[rows]), known, atol=1e-6)
        # the fragment sits where the state had its known rows, not at the origin
        assert torch.allclose(seen[0][rows, :3].mean(0), x_t[rows, :3].mean(0), atol=1e-6)


def test_sampling_with_a_real_denoiser_ends_on_the_fragment():
    torch.manual_seed(0)
    batch, known_rows, known = layout()
    space = ZeroCoMSpace(batch=batch)
    denoiser = Denoiser(EGNNDynamics(LATENT, hidden=16, num_blocks=2), PolynomialSchedule())
    generator = torch.Generator().manual_seed(0)
    cond = MoleculeCondition(batch, fully_connected_edges(batch, len(SIZES)))
    wrapped = FragmentInpainting(denoiser, known.repeat(len(SIZES), 1), known_rows, batch, len(SIZES),
                                 denoiser.schedule, generator)
    x_T = space.randn_like(torch.zeros(len(batch), 3 + LATENT), generator)
    with torch.no_grad():
        z = sample_ddpm(wrapped, x_T, denoiser.schedule, 8, space=space, generator=generator, cond=cond)
    assert torch.allclose(space.project(z), z, atol=1e-5)
    for m in range(len(SIZES)):
        assert torch.allclose(centred(z[(batch == m) & known_rows]), known, atol=1e-5)
    assert z[~known_rows].std() > 0.1


def test_place_fragment_puts_the_given_atoms_on_the_decoded_ones():
    batch, known_rows, _ = layout()
    given = torch.randn(FRAGMENT, 3) + 5.0
    given_types = torch.tensor([1, 1, 3, 0])
    positions = torch.randn(len(batch), 3)
    positions[known_rows] = given.repeat(len(SIZES), 1) - 5.0 + torch.tensor([1.0, 2.0, 3.0])
    placed, types, rmsd = place_fragment(positions, torch.zeros(len(batch), dtype=torch.long), batch, known_rows,
                                         given, given_types, len(SIZES))
    assert torch.allclose(rmsd, torch.zeros(len(SIZES)), atol=1e-5)
    assert torch.allclose(placed[known_rows], positions[known_rows], atol=1e-5)
    assert torch.equal(types[known_rows], given_types.repeat(len(SIZES)))
    assert torch.equal(placed[~known_rows], positions[~known_rows])


def test_fragment_files_and_sizes_are_checked(tmp_path):
    two = tmp_path / "two.xyz"
    two.write_text("1\n\nC 0 0 0\n1\n\nO 0 0 0\n")
    with pytest.raises(ValueError, match="2 molecules; give one fragment"):
        read_fragment(two, ("H", "C", "N", "O", "F"))
    odd = tmp_path / "odd.xyz"
    odd.write_text("1\n\nS 0 0 0\n")
    with pytest.raises(ValueError, match="odd.xyz"):
        read_fragment(odd, ("H", "C", "N", "O", "F"))
    histogram = {"num_atoms": [3, 5, 9], "count": [1, 2, 3]}
    assert atom_counts_above(histogram, 4, "f.xyz") == {"num_atoms": [5, 9], "count": [2, 3]}
    with pytest.raises(ValueError, match="modality.fragment.num_atoms"):
        atom_counts_above(histogram, 9, "f.xyz")


def test_fragment_with_non_finite_or_unreadable_atoms_is_a_data_error(tmp_path):
    nan = tmp_path / "nan.xyz"
    nan.write_text("2\n\nC 0 0 0\nO inf 0 0\n")
    with pytest.raises(DataError, match=r"nan.xyz: record 1: non-finite coordinates"):
        read_fragment(nan, ("H", "C", "N", "O", "F"))
    two = tmp_path / "two.xyz"
    two.write_text("1\n\nC 0 0 0\n1\n\nO 0 0 0\n")
    with pytest.raises(DataError, match=rf"partial={two}: holds 2 molecules"):
        read_fragment(two, ("H", "C", "N", "O", "F"))
    broken = tmp_path / "broken.sdf"
    broken.write_bytes(b"\x00\xff" * 50)
    with pytest.raises(DataError, match="broken.sdf"):
        read_fragment(broken, ("H", "C", "N", "O", "F"))
    with pytest.raises(FileNotFoundError, match="missing.xyz"):
        read_fragment(tmp_path / "missing.xyz", ("H", "C", "N", "O", "F"))
