"""Users' own molecules from ``.sdf`` and ``.xyz`` files, as the same packed dataset QM9 uses.

- ``.sdf`` / ``.mol``: read with rdkit (``SDMolSupplier(removeHs=False, sanitize=False)``: every
  atom as written, explicit hydrogens kept, no chemistry checks that would reject odd but valid
  geometries); coordinates from the first conformer. Hydrogens that are only implicit have no
  coordinates and are not added.
- ``.xyz``: one or many records back to back (``n`` / comment / ``n`` lines ``symbol x y z ...``;
  blank lines between records are allowed, extra columns after z are ignored, the symbol may be an
  atomic number, and QM9's ``1.5*^-6`` exponent notation is read).

Records are numbered from 1 within each file. A record that cannot be read, or holds an element
outside the vocabulary, raises ``ValueError("<path>: record <k>: <reason>")``; with ``skip_bad``
it is left out instead and listed in ``skipped`` as ``(path, record, reason)`` (one warning sums
them up). After a bad ``.xyz`` record, reading resumes at the next line that is a lone integer.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from rdkit import Chem, rdBase

from .elements import ATOMIC_NUMBERS, QM9_ELEMENTS, element_index
from .graphs import PackedMolecules

MOLECULE_EXTENSIONS = (".sdf", ".mol", ".xyz")
SYMBOL_OF_NUMBER = {number: symbol for symbol, number in ATOMIC_NUMBERS.items()}

Record = tuple[int, "list[str] | None", "np.ndarray | None", str]   # number, symbols, positions, error


class BadRecord(ValueError):
    """One unreadable record; ``MoleculeFiles`` adds the file name and record number."""


def _sdf_records(path: Path) -> Iterator[Record]:
    with rdBase.BlockLogs():   # rdkit prints each parse failure itself; we report them ourselves
        supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
        for number, mol in enumerate(supplier, start=1):
            if mol is None:
                yield number, None, None, "rdkit could not parse the record"
            elif mol.GetNumAtoms() == 0 or mol.GetNumConformers() == 0:
                yield number, None, None, "the record has no atoms with coordinates"
            else:
                symbols = [atom.GetSymbol() for atom in mol.GetAtoms()]
                yield number, symbols, mol.GetConformer().GetPositions(), ""


def _lone_integer(line: str) -> int | None:
    fields = line.split()
    if len(fields) == 1 and fields[0].lstrip("+").isdigit():
        return int(fields[0])
    return None


def _parse_xyz_atoms(lines: list[str], first_line: int) -> tuple[list[str], np.ndarray]:
    symbols, coordinates = [], []
    for offset, line in enumerate(lines):
        fields = line.split()
        try:
            if len(fields) < 4:
                raise ValueError
            coordinates.append([float(f.replace("*^", "e")) for f in fields[1:4]])
        except ValueError:
            raise BadRecord(f"line {first_line + offset}: expected 'symbol x y z', got {line.strip()!r}") from None
        symbol = fields[0]
        symbols.append(SYMBOL_OF_NUMBER.get(int(symbol), symbol) if symbol.isdigit() else symbol)
    return symbols, np.asarray(coordinates, dtype=np.float64)


def _xyz_records(path: Path) -> Iterator[Record]:
    lines = path.read_text().splitlines()
    line, number = 0, 0
    while line < len(lines):
        if not lines[line].strip():
            line += 1
            continue
        number += 1
        count = _lone_integer(lines[line])
        try:
            if count is None:
                raise BadRecord(f"line {line + 1}: expected the atom count, got {lines[line].strip()!r}")
            if count == 0:
                raise BadRecord(f"line {line + 1}: the record has no atoms")
            atoms = lines[line + 2:line + 2 + count]
            if len(atoms) < count:
                raise BadRecord(f"the file ends after {len(atoms)} of {count} atom lines")
            symbols, positions = _parse_xyz_atoms(atoms, line + 3)
        except BadRecord as exc:
            yield number, None, None, str(exc)
            # resync: the next lone integer after this record's comment line starts a record
            line += 2
            while line < len(lines) and _lone_integer(lines[line]) is None:
                line += 1
            continue
        yield number, symbols, positions, ""
        line += 2 + count


def _records(path: Path) -> Iterator[Record]:
    suffix = path.suffix.lower()
    if suffix in (".sdf", ".mol"):
        return _sdf_records(path)
    if suffix == ".xyz":
        return _xyz_records(path)
    raise ValueError(f"{path}: unsupported molecule file type {suffix!r}; expected one of {MOLECULE_EXTENSIONS}")


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in MOLECULE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no molecule files ({', '.join(MOLECULE_EXTENSIONS)}) under {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"molecule file {item} does not exist")
    return files


class MoleculeFiles(PackedMolecules):
    """Molecules from ``.sdf`` / ``.mol`` / ``.xyz`` files (a file, a folder searched recursively,
    or a list of either), in file order then record order. Items are like QM9's, with no
    properties (``y`` is [1, 0]). ``sources[m]`` is ``(path, record)`` of molecule ``m``."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], skip_bad: bool = False,
                 elements: tuple[str, ...] = QM9_ELEMENTS):
        self.files, self.elements, self.skip_bad = _expand(paths), tuple(elements), bool(skip_bad)
        self.skipped: list[tuple[Path, int, str]] = []
        self.sources: list[tuple[Path, int]] = []
        positions, types = [], []
        for path in self.files:
            for number, symbols, coordinates, error in _records(path):
                if not error:
                    try:
                        types.append(np.array([element_index(s, self.elements) for s in symbols], np.int8))
                    except ValueError as exc:
                        error = str(exc)
                if error:
                    if not self.skip_bad:
                        raise ValueError(f"{path}: record {number}: {error}")
                    self.skipped.append((path, number, error))
                    continue
                positions.append(coordinates.astype(np.float32))
                self.sources.append((path, number))
        if self.skipped:
            warnings.warn(f"MoleculeFiles: skipped {len(self.skipped)} bad record(s): " + "; ".join(
                f"{p} record {n} ({reason})" for p, n, reason in self.skipped[:10])
                + (" ..." if len(self.skipped) > 10 else ""), stacklevel=2)
        if not positions:
            raise ValueError(f"no readable molecules in {[str(p) for p in self.files]} "
                             f"({len(self.skipped)} record(s) skipped)")
        super().__init__(np.concatenate(positions), np.concatenate(types),
                         np.array([len(p) for p in positions]))

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)
