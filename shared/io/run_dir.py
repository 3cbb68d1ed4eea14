"""The run directory of ``mldm train``: created and locked at start, and removed again when the start fails.

``<run_dir>/config.yaml`` (the resolved config), ``checkpoints/``, ``logs/``, ``samples/``. A directory that
already holds a run is continued only with ``resume=true``; one that holds anything else (a user's files)
is refused: mldm writes runs into new or empty directories only. A start that fails before any checkpoint
was written leaves nothing behind (the directory, if mldm made it, or mldm's own entries in it), so the
same command can simply be run again.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from shared.errors import RunDirError
from shared.io.atomic_files import atomic_write_text
from shared.io.run_lock import LOCK_FILE, RunLock

RUN_ENTRIES = ("config.yaml", "checkpoints", "logs", "samples", "evaluation", LOCK_FILE)


def fresh_run_dir() -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir, n = Path("runs") / stamp, 1
    while run_dir.exists():
        n += 1
        run_dir = Path("runs") / f"{stamp}-{n}"
    return run_dir


def _check_usable(run_dir: Path, resume: bool) -> None:
    if resume or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirError(f"run_dir={run_dir}: exists and is not a directory")
    if (run_dir / "config.yaml").exists():
        raise RunDirError(f"run_dir={run_dir} already holds a run; pass resume=true to continue it "
                          f"or choose another run_dir")
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if foreign:
        raise RunDirError(f"run_dir={run_dir} holds files mldm did not write ({', '.join(foreign[:3])}"
                          f"{' ...' if len(foreign) > 3 else ''}); choose a new or empty directory")


def has_checkpoints(run_dir: Path) -> bool:
    return any((Path(run_dir) / "checkpoints").glob("*/step_*.json"))


@contextmanager
def open_run_dir(cfg: DictConfig, command: str = "train"):
    """Create (or reopen, with ``resume=true``) and lock the run directory; write the resolved config.yaml."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else fresh_run_dir()
    _check_usable(run_dir, bool(cfg.resume))
    created = not run_dir.exists()
    try:
        with RunLock(run_dir, command):
            for sub in ("checkpoints", "logs", "samples"):
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
            cfg.run_dir = str(run_dir)
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
            yield run_dir
    except Exception:
        if not cfg.resume and not has_checkpoints(run_dir):
            _remove_failed_start(run_dir, created)
        raise


def _remove_failed_start(run_dir: Path, created: bool) -> None:
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in RUN_ENTRIES:  # the directory was the user's (empty): take back only what mldm put there
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
