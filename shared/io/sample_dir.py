"""The sample directory, the same for every modality (``mldm sample``, ``mldm evaluate``, training previews):

    000000.<ext> ...   one file per sample (a modality's own format: .png, .ply, .obj, .xyz)
    samples.npz        the raw arrays (what the metrics read back)
    samples.jsonl      one line per sample: ``file`` (null for a sample without one), then the sample's fields
    <previews>         e.g. grid.png, preview.png, samples.sdf, chain.gif

Every file is written atomically and the index last, so its presence marks a complete directory. Sample
files a previous index in the directory named and this one does not are removed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np

from shared.io.atomic_files import atomic_savez, atomic_write, atomic_write_text

INDEX_FILE, ARRAYS_FILE = "samples.jsonl", "samples.npz"


def sample_file_names(n: int, suffix: str) -> list[str]:
    """``000000<suffix>`` ... (at least six digits, more when n needs them)."""
    digits = max(6, len(str(n - 1)))
    return [f"{i:0{digits}d}{suffix}" for i in range(n)]


def write_sample_dir(out_dir, files: Sequence[tuple[str | None, bytes | None]], records: Sequence[dict],
                     arrays: dict[str, np.ndarray],
                     previews: dict[str, Callable[[BinaryIO], object]] | None = None) -> Path:
    """``files``: (name, content) per sample, (None, None) for a sample without a file; ``records``: the
    sample's index fields; ``previews``: file name -> ``write(binary_file)``."""
    if len(files) != len(records):
        raise ValueError(f"{len(files)} sample files for {len(records)} index records")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in files]
    for name, content in files:
        if name is not None:
            atomic_write(out_dir / name, lambda f, content=content: f.write(content))
    for stale in _previously_indexed(out_dir) - set(names):
        if Path(stale).name == stale:  # only plain names, as an exporter writes them
            (out_dir / stale).unlink(missing_ok=True)
    for name, write in (previews or {}).items():
        atomic_write(out_dir / name, write)
    atomic_savez(out_dir / ARRAYS_FILE, arrays, compressed=True)
    atomic_write_text(out_dir / INDEX_FILE, "".join(json.dumps({"file": name, **record}) + "\n"
                                                    for name, record in zip(names, records)))
    return out_dir


def read_index(out_dir) -> list[dict]:
    """The index lines of a sample directory; a missing index or a line that is not JSON is named."""
    path = Path(out_dir) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; not a sample directory")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error})") from None
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
        raise ValueError(f"{path}: corrupt or truncated ({type(error).__name__}: {error})") from None
    missing = [key for key in required if key not in loaded]
    if missing:
        raise ValueError(f"{path}: no {', '.join(repr(k) for k in missing)} array")
    return loaded


def _previously_indexed(out_dir: Path) -> set[str]:
    try:
        return {r["file"] for r in read_index(out_dir) if isinstance(r.get("file"), str)}
    except (OSError, ValueError, AttributeError):  # no or unreadable old index: keep every file
        return set()
