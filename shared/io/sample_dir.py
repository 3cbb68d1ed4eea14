"""The sample directory, the same for every modality (``mldm sample``, ``mldm evaluate``, training previews):

    000000.<ext> ...   one file per sample (a modality's own format: .png, .ply, .obj, .xyz)
    samples.npz        the raw arrays (what the metrics read back)
    samples.jsonl      one line per sample: ``file`` (null for a sample without one), then the sample's fields
    <previews>         e.g. grid.png, preview.png, samples.sdf, chain.gif
    .mldm-files.json   the names of every file mldm wrote here (metrics.json included, once evaluated)

Nothing is lost: the directory is written whole into a temporary sibling and renamed into place, so a
reader or a crash never sees half of it. A directory holding only mldm's files (its manifest says which)
is replaced whole; one holding anything else is refused, or, under ``overwriting(True)`` (``overwrite=true``),
gets mldm's files replaced one by one and keeps the others. Non-finite samples are never written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np

from shared.errors import DataError, NonFiniteSamples, RunDirError
from shared.io.atomic_files import atomic_write_text

INDEX_FILE, ARRAYS_FILE, MANIFEST_FILE = "samples.jsonl", "samples.npz", ".mldm-files.json"
_overwrite: ContextVar[bool] = ContextVar("overwrite_foreign_files", default=False)


@contextmanager
def overwriting(enabled: bool):
    """Within this block, directories holding files mldm did not write are written into (``overwrite=true``)."""
    token = _overwrite.set(bool(enabled))
    try:
        yield
    finally:
        _overwrite.reset(token)


def sample_file_names(n: int, suffix: str) -> list[str]:
    """``000000<suffix>`` ... (at least six digits, more when n needs them)."""
    digits = max(6, len(str(n - 1)))
    return [f"{i:0{digits}d}{suffix}" for i in range(n)]


def check_finite_arrays(arrays: dict[str, np.ndarray], where) -> None:
    for key, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array.reshape(len(array), -1))).any(axis=1).sum()) if array.ndim else 1
            raise NonFiniteSamples(f"{bad} of {len(array) if array.ndim else 1} samples have non-finite "
                                   f"'{key}' values; nothing was written to {where}")


def write_sample_dir(out_dir, files: Sequence[tuple[str | None, bytes | None]], records: Sequence[dict],
                     arrays: dict[str, np.ndarray],
                     previews: dict[str, Callable[[BinaryIO], object]] | None = None) -> Path:
    """``files``: (name, content) per sample, (None, None) for a sample without a file; ``records``: the
    sample's index fields; ``previews``: file name -> ``write(binary_file)``."""
    if len(files) != len(records):
        raise ValueError(f"{len(files)} sample files for {len(records)} index records")
    out_dir = Path(out_dir).absolute()
    check_finite_arrays(arrays, out_dir)
    names = [name for name, _ in files]
    written = [n for n in names if n is not None] + list(previews or {}) + [ARRAYS_FILE, INDEX_FILE]
    foreign = check_writable(out_dir, written)
    staging = Path(tempfile.mkdtemp(dir=_parent(out_dir), prefix=f".{out_dir.name}.", suffix=".writing"))
    try:
        for name, content in files:
            if name is not None:
                (staging / name).write_bytes(content)
        for name, write in (previews or {}).items():
            with open(staging / name, "wb") as handle:
                write(handle)
        np.savez_compressed(staging / ARRAYS_FILE, **arrays)
        (staging / INDEX_FILE).write_text("".join(json.dumps({"file": name, **record}) + "\n"
                                                  for name, record in zip(names, records)), encoding="utf-8")
        _write_manifest(staging, written)
        _move_into_place(staging, out_dir, foreign)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def add_to_sample_dir(out_dir, name: str, text: str) -> Path:
    """One more file of mldm's (e.g. metrics.json) in ``out_dir``, written atomically and listed as mldm's."""
    out_dir = Path(out_dir)
    check_writable(out_dir, [name])
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / name, text)
    _write_manifest(out_dir, sorted(_own_files(out_dir) | {name}))
    return out_dir / name


def _parent(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent


def _own_files(out_dir: Path) -> set[str]:
    try:
        listed = json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
        return {name for name in listed if isinstance(name, str) and name and Path(name).name == name}
    except (OSError, ValueError, KeyError, TypeError):  # no or damaged manifest: nothing here is known to be mldm's
        return set()


def _write_manifest(directory: Path, names) -> None:
    atomic_write_text(directory / MANIFEST_FILE, json.dumps({"written_by": "mldm", "files": sorted(names)}, indent=1))


def check_writable(out_dir, names: Sequence[str] = ()) -> set[str]:
    """The files in ``out_dir`` mldm did not write; refused (one line) unless overwriting, and then still
    refused where one of them would be replaced."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return set()
    if not out_dir.is_dir():
        raise RunDirError(f"out_dir={out_dir}: exists and is not a directory")
    own = _own_files(out_dir)
    foreign = {p.name for p in out_dir.iterdir() if p.name not in own and p.name != MANIFEST_FILE
               and not (p.name.startswith(".") and p.name.endswith(".writing"))}
    if foreign and not _overwrite.get():
        shown = ", ".join(sorted(foreign)[:3]) + (" ..." if len(foreign) > 3 else "")
        raise RunDirError(f"out_dir={out_dir} holds files mldm did not write ({shown}); choose another out_dir, "
                          f"or pass overwrite=true to replace only mldm's own files there")
    clash = sorted(foreign & set(names))
    if clash:
        raise RunDirError(f"{out_dir / clash[0]}: not written by mldm, and overwrite=true replaces only mldm's "
                          f"own files: move it or choose another out_dir")
    return foreign


def _move_into_place(staging: Path, out_dir: Path, foreign: set[str]) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    if not foreign:  # all mldm's: swap the whole directory
        retired = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
        os.replace(out_dir, retired / "dir")
        os.replace(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
        return
    new = {p.name for p in staging.iterdir()}
    for stale in _own_files(out_dir) - new:  # mldm's files of the previous write this one does not have
        (out_dir / stale).unlink(missing_ok=True)
    for name in sorted(new - {MANIFEST_FILE}):
        os.replace(staging / name, out_dir / name)
    os.replace(staging / MANIFEST_FILE, out_dir / MANIFEST_FILE)


def read_index(out_dir) -> list[dict]:
    """The index lines of a sample directory; a missing index or a line that is not JSON is named."""
    path = Path(out_dir) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; not a sample directory")
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise DataError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError as error:
                raise DataError(f"{path}:{number}: not JSON ({error})") from None
            if not isinstance(record, dict) or not isinstance(record.get("file", None), (str, type(None))):
                raise DataError(f"{path}:{number}: expected an object with a 'file' name or null, got {line.strip()[:60]!r}")
            records.append(record)
    return records


def read_arrays(out_dir, required: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays of ``samples.npz``; a missing, truncated or incomplete file is named."""
    path = Path(out_dir) / ARRAYS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; not a complete sample directory")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as arrays:  # closes on error
            loaded = {key: arrays[key] for key in arrays.files}
    except Exception as error:  # BadZipFile, zlib.error, EOFError, ...
        raise DataError(f"{path}: corrupt or truncated ({type(error).__name__}: {error})") from None
    not_arrays = [key for key, value in loaded.items() if not isinstance(value, np.ndarray)]
    if not_arrays:  # np.load hands back the raw bytes of a member that is not in .npy format
        raise DataError(f"{path}: '{not_arrays[0]}' is not an array (corrupt member)")
    missing = [key for key in required if key not in loaded]
    if missing:
        raise DataError(f"{path}: no {', '.join(repr(k) for k in missing)} array")
    return loaded
