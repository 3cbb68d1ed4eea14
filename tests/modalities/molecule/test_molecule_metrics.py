"""EDM / GeoLDM molecule metrics: bond inference, stability, RDKit validity / uniqueness / novelty."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from modalities.molecule import metrics
from modalities.molecule.elements import QM9_ELEMENTS, element_index
from modalities.molecule.metrics import (
    evaluate_molecules,
    infer_bonds,
    mol_to_smiles,
    molecule_smiles,
    rdkit_metrics,
    stability,
    stable_atoms,
    to_rdkit,
    training_smiles,
)
from modalities.molecule.metrics_reference import reference_bond_order, reference_valences

KNOWN_STABLE = ["C", "O", "CCO", "CC#N", "CC(=O)O"]


def conformer(smiles: str) -> tuple[torch.Tensor, torch.Tensor]:
    molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(molecule, randomSeed=0)
    AllChem.MMFFOptimizeMolecule(molecule)
    positions = torch.tensor(molecule.GetConformer().GetPositions(), dtype=torch.float64)
    types = torch.tensor([element_index(atom.GetSymbol()) for atom in molecule.GetAtoms()])
    return positions, types


def concatenate(molecules: list[tuple[torch.Tensor, torch.Tensor]]):
    positions = torch.cat([p for p, _ in molecules])
    types = torch.cat([t for _, t in molecules])
    batch = torch.cat([torch.full((len(t),), k) for k, (_, t) in enumerate(molecules)])
    return positions, types, batch



def random_molecules(count: int, seed: int = 0):
    """Random walks with bond-length steps, so single, double and triple bonds all occur."""
    rng = np.random.default_rng(seed)
    molecules = []
    for _ in range(count):
        n = int(rng.integers(1, 10))
        points = [np.zeros(3)]
        for _ in range(n - 1):
            step = rng.normal(size=3)
            points.append(points[rng.integers(len(points))] + step / np.linalg.norm(step) * rng.uniform(0.9, 1.7))
        molecules.append((torch.tensor(np.array(points)), torch.from_numpy(rng.integers(0, 5, n))))
    return molecules


def test_tables_match_edm():
    for pair, length in {("C", "C"): 154, ("H", "C"): 109, ("H", "O"): 96, ("C", "O"): 143,
                         ("C", "N"): 147, ("H", "N"): 101, ("H", "H"): 74, ("O", "F"): 142}.items():
        assert metrics.BONDS1[pair] == length
    assert metrics.BONDS2[("C", "C")] == 134 and metrics.BONDS2[("C", "O")] == 120
    assert metrics.BONDS2[("C", "N")] == 129 and metrics.BONDS3[("C", "N")] == 116
    assert metrics.BONDS3[("C", "C")] == 120 and metrics.BONDS3[("N", "N")] == 110
    assert (metrics.MARGIN1, metrics.MARGIN2, metrics.MARGIN3) == (10, 5, 3)
    # pm boundaries: C-C single up to 164 (exclusive), double below 139, triple below 123
    for distance, order in [(1.6399, 1), (1.6401, 0), (1.3899, 2), (1.2299, 3), (1.2301, 2)]:
        two_carbons = torch.tensor([[0.0, 0, 0], [distance, 0, 0]], dtype=torch.float64)
        assert infer_bonds(two_carbons, torch.tensor([1, 1])).orders.tolist() == ([order] if order else [])
    # H-F has no double bond: even at 0.5 A it stays single
    bonds = infer_bonds(torch.tensor([[0.0, 0, 0], [0.5, 0, 0]]), torch.tensor([0, 4]))
    assert bonds.orders.tolist() == [1]


@pytest.mark.parametrize("smiles", KNOWN_STABLE)
def test_known_molecules_are_stable_and_valid(smiles):
    positions, types = conformer(smiles)
    result = evaluate_molecules(positions, types)
    assert result == {"atom_stability": 1.0, "mol_stability": 1.0, "validity": 1.0, "uniqueness": 1.0,
                      "novelty": None, "n": 1}
    (inferred,) = molecule_smiles(positions, types)
    assert inferred == Chem.MolToSmiles(Chem.AddHs(Chem.MolFromSmiles(smiles)))    # explicit [H], EDM
    assert Chem.CanonSmiles(inferred) == Chem.CanonSmiles(smiles)


def test_triple_bond_of_acetonitrile():
    positions, types = conformer("CC#N")
    bonds = infer_bonds(positions, types)
    carbon_nitrogen = [o for (i, j), o in zip(bonds.pairs.tolist(), bonds.orders.tolist())
                       if {QM9_ELEMENTS[types[i]], QM9_ELEMENTS[types[j]]} == {"C", "N"}]
    assert carbon_nitrogen == [3]


def test_benzene_is_unstable_under_edm_rule():
    # aromatic C-C ~1.39-1.40 A: single (< 1.64) but not double (< 1.39), so each C sums to 3
    positions, types = conformer("c1ccccc1")
    result = stability(positions, types)
    assert result["mol_stability"] == 0.0
    assert result["atom_stability"] == 0.5                     # the six H are fine, the six C are not


def test_stretched_bond_is_unstable():
    positions, types = conformer("CCO")
    bonds = infer_bonds(positions, types)
    i, j = next(pair for pair in bonds.pairs.tolist() if sorted(types[pair].tolist()) == [0, 1])
    hydrogen, carbon = (i, j) if types[i] == 0 else (j, i)
    direction = positions[hydrogen] - positions[carbon]
    positions = positions.clone()
    positions[hydrogen] = positions[carbon] + 2.0 * direction / direction.norm()
    result = stability(positions, types)
    assert result["mol_stability"] == 0.0
    assert result["atom_stability"] == pytest.approx(7 / 9)   # that H and its C lose one bond each


def test_vectorised_matches_per_pair_reference():
    molecules = random_molecules(300)
    positions, types, batch = concatenate(molecules)
    bonds = infer_bonds(positions, types, batch)
    expected = [v for p, t in molecules for v in reference_valences(p.numpy(), t.tolist())]
    assert bonds.valence.tolist() == expected
    assert set(bonds.orders.tolist()) == {1, 2, 3}                 # every order was exercised
    stable = stable_atoms(types, bonds)
    allowed = [metrics.ALLOWED_VALENCE[QM9_ELEMENTS[t]] for t in types.tolist()]
    assert stable.tolist() == [v == a for v, a in zip(expected, allowed)]
    assert 0 < int(stable.sum()) < len(stable)
    for k, (p, t) in enumerate(molecules):                          # per-molecule bond lists agree
        pairs, orders = bonds.molecule(k)
        for (i, j), order in zip(pairs.tolist(), orders.tolist()):
            assert 0 <= i < j < len(t)
            assert order == reference_bond_order(QM9_ELEMENTS[t[i]], QM9_ELEMENTS[t[j]],
                                                 float((p[i] - p[j]).norm()))


def test_chunking_does_not_change_results(monkeypatch):
    positions, types, batch = concatenate(random_molecules(120, seed=1))
    whole = infer_bonds(positions, types, batch)
    monkeypatch.setattr(metrics, "PAIR_BUDGET", 100)               # one molecule per chunk
    chunked = infer_bonds(positions, types, batch)
    for field in ("pairs", "orders", "atom_ptr", "bond_ptr", "valence"):
        assert torch.equal(getattr(whole, field), getattr(chunked, field))


def test_invariant_to_permutation_and_rigid_motion():
    molecules = [conformer(s) for s in KNOWN_STABLE + ["c1ccccc1"]] + random_molecules(60, seed=2)
    positions, types, batch = concatenate(molecules)
    reference = infer_bonds(positions, types, batch).valence
    rng = np.random.default_rng(3)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = positions @ torch.from_numpy(rotation).T + torch.tensor([3.0, -7.0, 11.0], dtype=torch.float64)
    assert torch.equal(infer_bonds(moved, types, batch).valence, reference)
    # shuffle molecule order and the atoms inside each, keep batch sorted
    order = torch.from_numpy(rng.permutation(len(molecules)))
    starts = torch.cumsum(torch.tensor([0] + [len(t) for _, t in molecules]), 0)
    permutation = torch.cat([starts[k] + torch.from_numpy(rng.permutation(len(molecules[k][1]))) for k in order])
    new_batch = torch.cat([torch.full((len(molecules[k][1]),), m) for m, k in enumerate(order.tolist())])
    permuted = infer_bonds(positions[permutation], types[permutation], new_batch)
    assert torch.equal(permuted.valence, reference[permutation])
    assert stability(positions[permutation], types[permutation], new_batch) == stability(positions, types, batch)


def test_uniqueness_and_novelty_definitions():
    result = rdkit_metrics(["CCO", "CCO", "O", None], reference_smiles=["O", "N"])
    assert result == {"validity": 0.75, "uniqueness": pytest.approx(2 / 3), "novelty": 0.5}
    assert rdkit_metrics(["CCO", None])["novelty"] is None
    assert rdkit_metrics([None, None], reference_smiles=set()) == {"validity": 0.0, "uniqueness": 0.0,
                                                                   "novelty": 0.0}


def test_evaluate_set_with_training_reference():
    ethanol, water, acid = conformer("CCO"), conformer("O"), conformer("CC(=O)O")
    reference = training_smiles(*concatenate([ethanol, water]))
    assert reference == {molecule_smiles(*ethanol)[0], molecule_smiles(*water)[0]}
    result = evaluate_molecules(*concatenate([ethanol, ethanol, acid, water]), reference_smiles=reference)
    assert result["n"] == 4 and result["validity"] == 1.0
    assert result["uniqueness"] == 0.75 and result["novelty"] == pytest.approx(1 / 3)


def test_largest_fragment_for_validity_whole_molecule_for_training():
    (ethanol_positions, ethanol_types), (water_positions, water_types) = conformer("CCO"), conformer("O")
    positions = torch.cat([ethanol_positions, water_positions + 10.0])       # one "molecule", two parts
    types = torch.cat([ethanol_types, water_types])
    (largest,) = molecule_smiles(positions, types)
    assert largest == molecule_smiles(ethanol_positions, ethanol_types)[0]
    (whole,) = training_smiles(positions, types)
    assert "." in whole


def test_invalid_molecule_and_rdkit_helpers():
    # a carbon with five hydrogens at 1.09 A: valence 5 does not sanitise
    directions = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]])
    positions = torch.cat([torch.zeros(1, 3), 1.09 * directions])
    types = torch.tensor([1, 0, 0, 0, 0, 0])
    assert molecule_smiles(positions, types) == [None]
    assert evaluate_molecules(positions, types)["validity"] == 0.0
    bonds = infer_bonds(positions, types)
    molecule = to_rdkit(positions, types, bonds.molecule(0))
    assert molecule.GetNumAtoms() == 6 and molecule.GetNumBonds() == 5
    assert np.allclose(molecule.GetConformer().GetPositions(), positions.numpy())
    assert mol_to_smiles(molecule) is None


def test_input_checks():
    positions, types = conformer("CCO")
    with pytest.raises(ValueError, match="sorted"):
        stability(positions, types, torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="indices into"):
        stability(positions, torch.full_like(types, 7))
    with pytest.raises(ValueError, match=r"\[num_atoms, 3\]"):
        stability(positions[:, :2], types)
    with pytest.raises(ValueError, match="no bond lengths"):
        stability(positions, types, elements=("H", "C", "N", "O", "S"))
    single = stability(torch.zeros(1, 3), torch.tensor([1]))               # a lone carbon: unstable
    assert single == {"atom_stability": 0.0, "mol_stability": 0.0}
