"""Files a loader left out with ``skip_bad=true``: never silent. Each loader reports them once; the
terminal gets one line with the count, and the paths with their reasons go to the run's log
(``<run_dir>/logs/skipped_inputs.txt``) when a command has opened one with ``skipped_inputs_log``."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable

LOG_NAME = "skipped_inputs.txt"
_log_file: ContextVar[Path | None] = ContextVar("skipped_inputs_log", default=None)
_reported: set[tuple[str, str, str]] = set()  # a dataset built once per stage reports its skips once


@contextmanager
def skipped_inputs_log(path: str | Path):
    """Within this block, ``report_skipped`` appends to ``path``."""
    token = _log_file.set(Path(path))
    try:
        yield Path(path)
    finally:
        _log_file.reset(token)


def report_skipped(source: str | Path, entries: Iterable[tuple[str | Path, str]]) -> None:
    """``entries``: (path or 'path:record', reason) of each input left out of ``source``."""
    log = _log_file.get()
    entries = [(str(where), str(reason).replace("\n", " ")) for where, reason in entries]
    entries = [entry for entry in entries if (str(log), *entry) not in _reported]
    if not entries:
        return
    _reported.update((str(log), *entry) for entry in entries)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as file:
            file.writelines(f"{where}\t{reason}\n" for where, reason in entries)
    listed = f"listed in {log}" if log is not None else f"first: {entries[0][0]} ({entries[0][1]})"
    print(f"mldm: skip_bad: skipped {len(entries)} bad input(s) of {source} ({listed})", file=sys.stderr)
