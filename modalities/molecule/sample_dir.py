"""The molecule sample directory (DESIGN.md's contract): one ``.xyz`` per molecule, all of them in
``samples.sdf``, the raw arrays in ``samples.npz`` (packed rows + atom counts), a ``grid.png`` of 2D
depictions, optionally ``chain.gif``, and the ``samples.jsonl`` index, written last."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from modalities.molecule.export import write_chain_gif, write_grid_png, write_sdf, write_xyz
from shared.io.atomic_files import atomic_savez, atomic_write

INDEX_FILE, ARRAYS_FILE, SDF_FILE, GRID_FILE, CHAIN_FILE = (
    "samples.jsonl", "samples.npz", "samples.sdf", "grid.png", "chain.gif")


def write_molecule_samples(out_dir: Path, positions: torch.Tensor, atom_types: torch.Tensor, num_atoms: torch.Tensor,
                           records: list[dict], chain: torch.Tensor | None = None, grid_max: int = 48) -> Path:
    """``positions`` [n, 3] Å and ``atom_types`` [n] packed molecule after molecule (``num_atoms`` [M]);
    ``records`` [M] extra index fields (seed, properties); ``chain`` [T, n_0, 3]: molecule 0's trajectory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    positions, atom_types = positions.detach().float().cpu(), atom_types.detach().long().cpu()
    num_atoms = torch.as_tensor(num_atoms).long().cpu()
    batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    files = [path.name for path in write_xyz(out_dir, positions, atom_types, batch)]
    write_sdf(out_dir / SDF_FILE, positions, atom_types, batch, names=[Path(f).stem for f in files])
    shown = int(num_atoms[:grid_max].sum())
    try:
        write_grid_png(out_dir / GRID_FILE, positions[:shown], atom_types[:shown], batch[:shown])
    except ImportError as error:  # a headless machine without libXrender: every other file is still written
        warnings.warn(f"{out_dir / GRID_FILE} not written: {error}", stacklevel=2)
    if chain is not None:
        write_chain_gif(out_dir / CHAIN_FILE, chain, atom_types[:int(num_atoms[0])])
    atomic_savez(out_dir / ARRAYS_FILE, {"positions": positions.numpy(), "atom_types": atom_types.numpy(),
                                         "num_atoms": num_atoms.numpy()}, compressed=True)
    lines = "".join(json.dumps({"file": name, "num_atoms": int(n), **record}) + "\n"
                    for name, n, record in zip(files, num_atoms.tolist(), records))
    atomic_write(out_dir / INDEX_FILE, lambda f: f.write(lines.encode("utf-8")))
    return out_dir


def read_molecule_samples(out_dir: Path) -> dict[str, torch.Tensor]:
    """(positions, atom_types, num_atoms, batch) of a sample directory; a clear error for an incomplete one."""
    out_dir = Path(out_dir)
    path = out_dir / ARRAYS_FILE
    if not (out_dir / INDEX_FILE).exists() or not path.exists():
        raise FileNotFoundError(f"{out_dir}: not a complete molecule sample directory "
                                f"(needs {INDEX_FILE} and {ARRAYS_FILE})")
    try:
        with np.load(path) as arrays:
            positions, atom_types, num_atoms = (torch.from_numpy(arrays[k]) for k in
                                                ("positions", "atom_types", "num_atoms"))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: unreadable molecule samples ({error})") from None
    if positions.shape != (int(num_atoms.sum()), 3) or atom_types.shape != (len(positions),):
        raise ValueError(f"{path}: positions {tuple(positions.shape)}, atom_types {tuple(atom_types.shape)} and "
                         f"num_atoms (sum {int(num_atoms.sum())}) disagree")
    if not torch.isfinite(positions).all():
        raise ValueError(f"{path}: positions contain NaN or inf")
    batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms.long())
    return {"positions": positions.float(), "atom_types": atom_types.long(), "num_atoms": num_atoms.long(),
            "batch": batch}
