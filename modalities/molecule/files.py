"""Users' own molecules from ``.sdf`` and ``.xyz`` files, as the same packed dataset QM9 uses.

- ``.sdf`` / ``.mol``: read with rdkit (``SDMolSupplier(removeHs=False, sanitize=False)``: every
  atom as written, explicit hydrogens kept, no chemistry checks that would reject odd but valid
  geometries); coordinates from the first conformer. Hydrogens that are only implicit have no
  coordinates and are not added.
- ``.xyz``: one or many records back to back (``n`` / comment / ``n`` lines ``symbol x y z ...``;
  blank lines between records are allowed, extra columns after z are ignored, the symbol may be an
  atomic number, and QM9's ``1.5*^-6`` exponent notation is read).

Records are numbered from 1 within each file. A record that cannot be read, holds an element outside
the vocabulary, or NaN/inf coordinates (also numbers beyond float32's range, which would become inf)
raises ``DataError("<path>: record <k>: <reason>")``, a file that cannot be read at all
``DataError("<path>: <reason>")``; with ``skip_bad`` either is left out instead, listed in ``skipped`` as
``(path, record or None, reason)`` and reported (``shared.io.skipped_inputs``). After a bad ``.xyz``
record, reading resumes at the next line that is a lone integer.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from rdkit import Chem, rdBase

from shared.io.data_errors import data_error, describe, excerpt, non_finite_rows, one_line
from shared.io.skipped_inputs import report_skipped

from .elements import ATOMIC_NUMBERS, QM9_ELEMENTS, element_index
from .graphs import PackedMolecules

MOLECULE_EXTENSIONS = (".sdf", ".mol", ".xyz")
SYMBOL_OF_NUMBER = {number: symbol for symbol, number in ATOMIC_NUMBERS.items()}
# ASCII digits only: str.isdigit() admits '²', which int() rejects; 9 digits bound any real atom count
ATOM_COUNT = re.compile(r"\+?[0-9]{1,9}")
ATOMIC_NUMBER = re.compile(r"[0-9]{1,3}")

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
    match = ATOM_COUNT.fullmatch(line.strip())
    return int(match.group()) if match else None


def _symbol(field: str) -> str:
    """An element symbol, or an atomic number written in its place."""
    return SYMBOL_OF_NUMBER.get(int(field), field) if ATOMIC_NUMBER.fullmatch(field) else field


def _parse_xyz_atoms(lines: list[str], first_line: int) -> tuple[list[str], np.ndarray]:
    symbols, coordinates = [], []
    for offset, line in enumerate(lines):
        fields = line.split()
        try:
            if len(fields) < 4:
                raise ValueError
            coordinates.append([float(f.replace("*^", "e")) for f in fields[1:4]])
        except ValueError:
            got = excerpt(line.strip())
            raise BadRecord(f"line {first_line + offset}: expected 'symbol x y z', got {got}") from None
        symbols.append(_symbol(fields[0]))
    return symbols, np.asarray(coordinates, dtype=np.float64)


def _text_lines(path: Path) -> list[str]:
    """The file's lines; bytes that are not UTF-8 become U+FFFD (a comment line may hold anything, and a
    binary file then fails on its first record, quoted). Only \\n, \\r\\n and \\r end a line, so line
    numbers match an editor's."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _xyz_records(path: Path) -> Iterator[Record]:
    lines = _text_lines(path)
    line, number = 0, 0
    while line < len(lines):
        if not lines[line].strip():
            line += 1
            continue
        number += 1
        count = _lone_integer(lines[line])
        try:
            if count is None:
                raise BadRecord(f"line {line + 1}: expected the atom count, got {excerpt(lines[line].strip())}")
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
    raise BadRecord(f"unsupported molecule file type {suffix!r}; expected one of {MOLECULE_EXTENSIONS}")


def _record_arrays(symbols: list[str], coordinates: np.ndarray,
                   elements: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(atom types int8 [n], positions float32 [n, 3]) of a parsed record; BadRecord for what training
    must not see: unknown elements, NaN/inf (a float64 beyond float32's range turns inf here)."""
    try:
        types = np.array([element_index(s, elements) for s in symbols], np.int8)
    except ValueError as exc:
        raise BadRecord(str(exc)) from None
    with np.errstate(over="ignore"):
        positions = np.asarray(coordinates, dtype=np.float32).reshape(len(types), 3)
    problem = non_finite_rows(positions, "atoms")
    if problem is not None:
        raise BadRecord(f"non-finite coordinates: {problem}")
    return types, positions


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


def _source_name(paths) -> str:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
    return str(items[0]) if len(items) == 1 else f"{len(items)} molecule inputs ({', '.join(map(str, items[:3]))}...)"


class MoleculeFiles(PackedMolecules):
    """Molecules from ``.sdf`` / ``.mol`` / ``.xyz`` files (a file, a folder searched recursively,
    or a list of either), in file order then record order. Items are like QM9's, with no
    properties (``y`` is [1, 0]). ``sources[m]`` is ``(path, record)`` of molecule ``m``."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], skip_bad: bool = False,
                 elements: tuple[str, ...] = QM9_ELEMENTS):
        self.files, self.elements, self.skip_bad = _expand(paths), tuple(elements), bool(skip_bad)
        self.skipped: list[tuple[Path, int | None, str]] = []
        self.sources: list[tuple[Path, int]] = []
        positions, types = [], []
        for path in self.files:
            for number, record_types, record_positions in self._good_records(path):
                types.append(record_types)
                positions.append(record_positions)
                self.sources.append((path, number))
        source = _source_name(paths)
        report_skipped(source, [(path if number is None else f"{path}: record {number}", reason)
                                for path, number, reason in self.skipped])
        if not positions:
            raise data_error(source, f"no readable molecules ({len(self.skipped)} record(s) skipped)")
        super().__init__(np.concatenate(positions), np.concatenate(types),
                         np.array([len(p) for p in positions]))

    def _good_records(self, path: Path) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(record, types, positions) of each good record of ``path``; a bad one raises or is skipped."""
        try:
            records = list(_records(path))
        except BadRecord as exc:
            return self._bad(path, None, str(exc))
        except Exception as exc:  # rdkit's and the OS's errors on the whole file
            return self._bad(path, None, f"cannot read molecules ({describe(exc)})")
        good = []
        for number, symbols, coordinates, error in records:
            if not error:
                try:
                    good.append((number, *_record_arrays(symbols, coordinates, self.elements)))
                    continue
                except BadRecord as exc:
                    error = str(exc)
            self._bad(path, number, error)
        return good

    def _bad(self, path: Path, number: int | None, reason: str) -> list:
        if not self.skip_bad:
            raise data_error(path, reason, number)
        self.skipped.append((path, number, one_line(reason)))
        return []

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)
