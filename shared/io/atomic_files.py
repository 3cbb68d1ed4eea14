"""Files that appear whole or not at all: write to a temporary file beside the target, then rename
(``os.replace`` is atomic on one filesystem), so a reader or a crashed run never sees half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write through ``write(binary_file)`` into a temporary file beside ``path``, then rename over it."""
    def through_file(temporary: Path):
        with open(temporary, "wb") as file:
            write(file)

    atomic_write_path(path, through_file)


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``write(temporary_path)`` for writers that take a path (safetensors' ``save_file`` streams a checkpoint
    to disk without holding its bytes), then fsync and rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` as UTF-8 to ``path``, atomically."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_savez(path: str | os.PathLike, arrays: dict, compressed: bool = False) -> None:
    """``np.savez`` (or ``savez_compressed``) of ``arrays`` to ``path``, atomically."""
    import numpy as np  # here, so that the CLI's entry point (which writes config.yaml) stays light

    save = np.savez_compressed if compressed else np.savez
    atomic_write(path, lambda file: save(file, **arrays))
