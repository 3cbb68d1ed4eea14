"""The molecule sample directory (the contract of ``shared.io.sample_dir``): one ``.xyz`` per molecule, all of them in
``samples.sdf``, the raw arrays in ``samples.npz`` (packed rows + atom counts), a ``grid.png`` of 2D
depictions, optionally ``chain.gif``, and the ``samples.jsonl`` index, written last."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from shared.io.data_errors import data_error
from modalities.molecule.formats import chain_gif_bytes, grid_png_bytes, sdf_bytes, xyz_bytes
from shared.io.animation import CHAIN_FILE
from shared.io.sample_dir import ARRAYS_FILE, INDEX_FILE, read_arrays, sample_file_names, write_sample_dir

SDF_FILE, GRID_FILE = "samples.sdf", "grid.png"


def export_molecule_samples(out_dir: Path, positions: torch.Tensor, atom_types: torch.Tensor, num_atoms: torch.Tensor,
                           records: list[dict], chain: torch.Tensor | None = None, grid_max: int = 48) -> Path:
    """``positions`` [n, 3] Å and ``atom_types`` [n] packed molecule after molecule (``num_atoms`` [M]);
    ``records`` [M] extra index fields (seed, properties); ``chain`` [T, n_0, 3]: molecule 0's trajectory."""
    positions, atom_types = positions.detach().float().cpu(), atom_types.detach().long().cpu()
    num_atoms = torch.as_tensor(num_atoms).long().cpu()
    batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    files = list(zip(sample_file_names(len(num_atoms), ".xyz"), xyz_bytes(positions, atom_types, batch)))
    sdf = sdf_bytes(positions, atom_types, batch, names=[Path(name).stem for name, _ in files])
    previews = {SDF_FILE: lambda f: f.write(sdf)}
    shown = int(num_atoms[:grid_max].sum())
    try:
        grid = grid_png_bytes(positions[:shown], atom_types[:shown], batch[:shown])
        previews[GRID_FILE] = lambda f: f.write(grid)
    except ImportError as error:  # a headless machine without libXrender: every other file is still written
        warnings.warn(f"{Path(out_dir) / GRID_FILE} not written: {error}", stacklevel=2)
    if chain is not None:
        gif = chain_gif_bytes(chain, atom_types[:int(num_atoms[0])])
        previews[CHAIN_FILE] = lambda f: f.write(gif)
    arrays = {"positions": positions.numpy(), "atom_types": atom_types.numpy(), "num_atoms": num_atoms.numpy()}
    index = [{"num_atoms": int(n), **record} for n, record in zip(num_atoms.tolist(), records)]
    return write_sample_dir(out_dir, files, index, arrays, previews)


def load_molecule_samples(out_dir: Path) -> dict[str, torch.Tensor]:
    """(positions, atom_types, num_atoms, batch) of a sample directory; a clear error for an incomplete one."""
    out_dir = Path(out_dir)
    path = out_dir / ARRAYS_FILE
    if not (out_dir / INDEX_FILE).exists() or not path.exists():
        raise FileNotFoundError(f"{out_dir}: not a complete molecule sample directory "
                                f"(needs {INDEX_FILE} and {ARRAYS_FILE})")
    arrays = read_arrays(out_dir, required=("positions", "atom_types", "num_atoms"))
    dtypes = {"positions": np.float32, "atom_types": np.int64, "num_atoms": np.int64}
    for key, dtype in dtypes.items():
        if arrays[key].dtype.kind not in ("fiu" if key == "positions" else "iu"):
            raise data_error(path, f"{key} has dtype {arrays[key].dtype}")
    with np.errstate(over="ignore", invalid="ignore"):   # beyond float32's range: inf, refused below
        positions, atom_types, num_atoms = (torch.from_numpy(arrays[k].astype(t)) for k, t in dtypes.items())
    if positions.shape != (int(num_atoms.sum()), 3) or atom_types.shape != (len(positions),) or num_atoms.ndim != 1 \
            or (num_atoms < 0).any():
        raise data_error(path, f"positions {tuple(positions.shape)}, atom_types {tuple(atom_types.shape)} and "
                         f"num_atoms (sum {int(num_atoms.sum())}) disagree")
    if not torch.isfinite(positions).all():
        raise data_error(path, "positions contain NaN or inf")
    batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    return {"positions": positions, "atom_types": atom_types, "num_atoms": num_atoms, "batch": batch}
