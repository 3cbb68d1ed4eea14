"""Molecule exports: SDF, XYZ, PNG grid and denoising-chain GIF."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from rdkit import Chem
from rdkit.Chem import AllChem

from modalities.molecule.elements import QM9_ELEMENTS, element_index
from modalities.molecule.formats import read_xyz, write_chain_gif, write_grid_png, write_sdf, write_xyz
from shared.errors import DataError


def conformer(smiles: str) -> tuple[torch.Tensor, torch.Tensor]:
    molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(molecule, randomSeed=0)
    AllChem.MMFFOptimizeMolecule(molecule)
    positions = torch.tensor(molecule.GetConformer().GetPositions(), dtype=torch.float32)
    return positions, torch.tensor([element_index(a.GetSymbol()) for a in molecule.GetAtoms()])


@pytest.fixture(scope="module")
def samples():
    """Ethanol, acetonitrile and an invalid carbon with five hydrogens, in the sparse layout."""
    directions = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]])
    invalid = (torch.cat([torch.zeros(1, 3), 1.09 * directions]), torch.tensor([1, 0, 0, 0, 0, 0]))
    molecules = [conformer("CCO"), conformer("CC#N"), invalid]
    positions = torch.cat([p for p, _ in molecules])
    types = torch.cat([t for _, t in molecules])
    batch = torch.cat([torch.full((len(t),), k) for k, (_, t) in enumerate(molecules)])
    return molecules, positions, types, batch


def test_sdf_round_trip(tmp_path, samples):
    molecules, positions, types, batch = samples
    path = write_sdf(tmp_path / "out" / "samples.sdf", positions, types, batch, names=["a", "b", "c"])
    read = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    assert len(read) == 3 and all(m is not None for m in read)       # the invalid one is kept
    for molecule, (p, t), name in zip(read, molecules, "abc"):
        assert molecule.GetProp("_Name") == name
        assert [a.GetSymbol() for a in molecule.GetAtoms()] == [QM9_ELEMENTS[i] for i in t.tolist()]
        assert np.allclose(molecule.GetConformer().GetPositions(), p.numpy(), atol=1e-4)
    assert [m.GetIntProp("sanitized") for m in read] == [1, 1, 0]
    triple = read[1]
    assert any(b.GetBondType() == Chem.BondType.TRIPLE for b in triple.GetBonds())
    assert list(Chem.SDMolSupplier(str(path), removeHs=False))[2] is None   # sanitising readers reject it


def test_xyz_round_trip(tmp_path, samples):
    molecules, positions, types, batch = samples
    paths = write_xyz(tmp_path / "xyz", positions, types, batch, comments=["ethanol", "acn", "bad"])
    assert [p.name for p in paths] == ["000000.xyz", "000001.xyz", "000002.xyz"]
    for path, (p, t), comment in zip(paths, molecules, ["ethanol", "acn", "bad"]):
        symbols, coordinates, read_comment = read_xyz(path)
        assert symbols == [QM9_ELEMENTS[i] for i in t.tolist()] and read_comment == comment
        assert np.allclose(coordinates, p.numpy(), atol=1e-6)
        assert path.read_text().splitlines()[0] == str(len(t))


def test_png_grid(tmp_path, samples):
    _, positions, types, batch = samples
    path = write_grid_png(tmp_path / "grid.png", positions, types, batch, per_row=2)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 500)    # 3 cells, 2 per row, 250 px
        assert np.asarray(image.convert("L")).min() < 200          # something was drawn


def test_png_grid_survives_a_molecule_rdkit_cannot_draw(tmp_path, samples):
    """A clump of 23 carbons, every one bonded to every other, gets coincident 2D coordinates that
    RDKit's drawer rejects ("Cannot normalize a zero length vector"); the grid still gets written, with
    that cell labelled."""
    (ethanol_positions, ethanol_types), *_ = samples[0]
    clump = torch.randn(23, 3, generator=torch.Generator().manual_seed(1)) * 0.6
    positions = torch.cat([clump, ethanol_positions])
    types = torch.cat([torch.full((23,), element_index("C")), ethanol_types])
    batch = torch.cat([torch.zeros(23, dtype=torch.long), torch.ones(len(ethanol_types), dtype=torch.long)])
    path = write_grid_png(tmp_path / "grid.png", positions, types, batch, per_row=2)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (250, 500)
    assert pixels[:, :250].min() < 200 and pixels[:, 250:].min() < 200     # both cells show something


def test_chain_gif(tmp_path, samples):
    (ethanol_positions, ethanol_types), *_ = samples[0]
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(size=(4, *ethanol_positions.shape))).float()
    frames = [ethanol_positions + noise[k] * (3 - k) / 3 for k in range(4)]   # noise -> molecule
    path = write_chain_gif(tmp_path / "chain.gif", frames, ethanol_types, size_px=160)
    with Image.open(path) as image:
        assert image.format == "GIF" and image.n_frames == 4 and image.size == (160, 160)
    with pytest.raises(ValueError, match="frames must be"):
        write_chain_gif(tmp_path / "bad.gif", torch.zeros(2, 3, 3), ethanol_types)


def test_write_failure_names_the_path(tmp_path, samples):
    _, positions, types, batch = samples
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot write .*file"):
        write_sdf(blocker / "samples.sdf", positions, types, batch)
    with pytest.raises(ValueError, match="2 names for 3 molecules"):
        write_sdf(tmp_path / "x.sdf", positions, types, batch, names=["a", "b"])


def test_headless_machine_writes_every_file_but_the_grid(tmp_path, samples, monkeypatch):
    """Without libXrender RDKit's drawing module cannot load: the grid is skipped with a warning that
    names the fix, the sample directory is otherwise complete and readable."""
    from modalities.molecule.export import load_molecule_samples, export_molecule_samples

    _, positions, types, batch = samples
    monkeypatch.setitem(sys.modules, "rdkit.Chem.Draw", None)   # any import of it now raises ImportError
    with pytest.raises(ImportError, match="libxrender1"):
        write_grid_png(tmp_path / "grid.png", positions, types, batch)
    num_atoms = torch.bincount(batch)
    with pytest.warns(UserWarning, match="grid.png not written.*libxrender1"):
        out = export_molecule_samples(tmp_path / "samples", positions, types, num_atoms, [{}] * len(num_atoms))
    assert not (out / "grid.png").exists()
    assert {"samples.jsonl", "samples.npz", "samples.sdf", "000002.xyz"} <= {p.name for p in out.iterdir()}
    assert torch.equal(load_molecule_samples(out)["num_atoms"], num_atoms)


@pytest.mark.parametrize("content, message", [
    ("2\n\nC 0 0 0\nO nan 0 0\n", "non-finite coordinates: NaN/inf in 1 of 2 atoms"),
    ("2\n\nC 0\nO 1\n", "atom line 1: expected 'symbol x y z'"),    # too few numbers: no reshape error
    ("3\n\nC 0 0 0\n", "header says 3 atoms, found 1 lines"),
    ("", "no atom count on line 1"),
    (b"2\n\xff\xfe\n", "not UTF-8 text"),
])
def test_read_xyz_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.xyz"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message) as error:
        read_xyz(path)
    assert str(error.value).startswith(f"{path}: ")
