"""Captions of a folder of media files (images, videos): ``<root>/captions.jsonl`` (lines
``{"file": <path relative to root>, "caption": ...}``), else a text file beside the file (``cat.txt`` or
``cat.png.txt`` for ``cat.png``), else ``""``. A bad index line or a non-UTF-8 text file is a one-line
``DataError`` naming it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from shared.errors import DataError
from shared.io.data_errors import data_error, describe, excerpt

INDEX_NAME = "captions.jsonl"


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise data_error(path, f"not UTF-8 text ({describe(exc)})") from exc


def _entry(line: str, index_file: Path, number: int) -> tuple[str, str]:
    """(file relative to the root, caption) of one index line."""
    try:
        entry = json.loads(line)
        return Path(entry["file"]).as_posix(), str(entry["caption"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        raise DataError(f"{index_file}:{number}: expected "
                        f'{{"file": ..., "caption": ...}}, got {excerpt(line)}') from exc


def folder_captions(root: Path, files: Sequence[Path], known: Sequence[Path], kind: str) -> list[str]:
    """One caption per file of ``files``; the index may only name files of ``known`` (e.g. the files kept
    and the ones skipped as unreadable)."""
    listed: dict[str, str] = {}
    index_file = root / INDEX_NAME
    if index_file.is_file():
        for number, line in enumerate(read_text(index_file).splitlines(), 1):
            if line.strip():
                file, caption = _entry(line, index_file, number)
                listed[file] = caption
        unknown = sorted(set(listed) - {p.relative_to(root).as_posix() for p in known})
        if unknown:
            raise data_error(index_file, f"lists files that are not {kind} under {root}: {unknown[:5]}")
    captions = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        sidecar = next((s for s in (path.with_suffix(".txt"), path.with_name(path.name + ".txt")) if s.is_file()), None)
        if relative in listed:
            captions.append(listed[relative])
        else:
            captions.append(read_text(sidecar).strip() if sidecar is not None else "")
    return captions
