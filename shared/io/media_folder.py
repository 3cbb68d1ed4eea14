"""A folder of a user's media files (images, videos): the files it holds, and which of them can be read.

Every file is checked at construction, so training never meets a bad one mid-run: a file the check refuses
(a ``DataError`` naming it) stops the loader, or with ``skip_bad`` is left out and reported once
(``shared.io.skipped_inputs``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from shared.errors import DataError
from shared.io.data_errors import data_error, reason_of
from shared.io.skipped_inputs import report_skipped


def media_files(root: Path, suffixes: Sequence[str], kind: str) -> list[Path]:
    """Every file under ``root`` (recursive, sorted) with one of ``suffixes``; ``kind``: "images", "videos"."""
    if not root.is_dir():
        raise FileNotFoundError(f"{kind[:-1]} folder {root} does not exist or is not a directory")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"no {kind} ({', '.join(suffixes)}) found under {root}")
    return found


def readable_files(root: Path, candidates: Sequence[Path], check: Callable[[Path], object], skip_bad: bool,
                   kind: str) -> tuple[list[tuple[Path, object]], list[Path]]:
    """(``[(path, check(path)), ...]`` of the files ``check`` accepts, the skipped paths)."""
    kept, skipped, reasons = [], [], []
    for path in candidates:
        try:
            kept.append((path, check(path)))
        except DataError as error:
            if not skip_bad:
                raise
            skipped.append(path)
            reasons.append((path, reason_of(error, path)))
    report_skipped(root, reasons)
    if not kept:
        raise data_error(root, f"no readable {kind} ({len(skipped)} skipped)")
    return kept, skipped
