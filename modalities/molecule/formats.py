"""Molecule sample files: a multi-molecule ``.sdf``, one ``.xyz`` per molecule, a PNG grid of 2D
depictions and a GIF of a denoising chain. Bonds always come from ``metrics.infer_bonds`` (EDM's
distance rule), so files show exactly the molecules the metrics scored. Inputs use the sparse
layout of ``metrics``: ``positions`` [num_atoms, 3] Å, ``atom_types`` [num_atoms], ``batch``.
"""
from __future__ import annotations

import importlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from shared.io.data_errors import check_finite, data_error, describe, excerpt
from shared.io.animation import gif_bytes
from shared.io.atomic_files import atomic_write
from shared.io.sample_dir import sample_file_names
from modalities.molecule.elements import QM9_ELEMENTS
from modalities.molecule.metrics import InferredBonds, infer_bonds, to_rdkit

# CPK-like colours for the GIF; anything else is drawn grey
ELEMENT_COLORS = {"H": "#d9d9d9", "C": "#404040", "N": "#3050f8", "O": "#ff0d0d", "F": "#90e050"}
ELEMENT_SIZES = {"H": 40.0}                 # marker area; heavy atoms get DEFAULT_SIZE
DEFAULT_SIZE = 110.0


def _write(path, write: Callable) -> Path:
    """Atomic write through ``write(binary_file)``; any OS failure names the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from error
    return path


def _molecules(positions, atom_types, batch, elements: tuple[str, ...]):
    """(positions float64 numpy, atom_types long tensor, InferredBonds) after the metrics' checks."""
    bonds = infer_bonds(positions, atom_types, batch, elements)
    positions = np.asarray(torch.as_tensor(positions).detach().cpu(), dtype=np.float64)
    return positions, torch.as_tensor(atom_types).cpu().long(), bonds


def _rdkit_molecules(positions, atom_types, batch, elements) -> list[tuple[Chem.Mol, bool]]:
    """(molecule, sanitised) per molecule: sanitised when RDKit accepts it, else left as built with
    its property cache updated leniently so writers and drawers can still handle it."""
    positions, atom_types, bonds = _molecules(positions, atom_types, batch, elements)
    out = []
    with rdBase.BlockLogs():
        for k in range(bonds.num_molecules):
            atoms = slice(int(bonds.atom_ptr[k]), int(bonds.atom_ptr[k + 1]))
            molecule = to_rdkit(positions[atoms], atom_types[atoms], bonds.molecule(k), elements)
            try:
                Chem.SanitizeMol(molecule)
                out.append((molecule, True))
            except ValueError:
                molecule = to_rdkit(positions[atoms], atom_types[atoms], bonds.molecule(k), elements)
                molecule.UpdatePropertyCache(strict=False)
                out.append((molecule, False))
    return out


def _check_names(names, n: int, what: str) -> list[str] | None:
    if names is None:
        return None
    names = [str(name) for name in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} {what} for {n} molecules")
    return names


def write_sdf(path, positions, atom_types, batch=None, names: Sequence[str] | None = None,
              elements: tuple[str, ...] = QM9_ELEMENTS) -> Path:
    """``sdf_bytes`` written to ``path``."""
    data = sdf_bytes(positions, atom_types, batch, names, elements)
    return _write(path, lambda f: f.write(data))


def sdf_bytes(positions, atom_types, batch=None, names: Sequence[str] | None = None,
              elements: tuple[str, ...] = QM9_ELEMENTS) -> bytes:
    """All molecules into one SD file with 3D coordinates and the inferred bonds. Molecules RDKit
    rejects are written unsanitised (property ``sanitized`` = 0), never dropped, so record k is
    molecule k. ``names`` (default ``mol_<k>``) become the record titles."""
    molecules = _rdkit_molecules(positions, atom_types, batch, elements)
    names = _check_names(names, len(molecules), "names") or [f"mol_{k}" for k in range(len(molecules))]
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    with rdBase.BlockLogs():
        for (molecule, sanitized), name in zip(molecules, names):
            molecule.SetProp("_Name", name)
            molecule.SetIntProp("sanitized", int(sanitized))
            writer.SetKekulize(sanitized)   # unsanitised ones have no aromatic flags to kekulise
            writer.write(molecule)
    writer.close()
    return buffer.getvalue().encode("utf-8")


def write_xyz(out_dir, positions, atom_types, batch=None, comments: Sequence[str] | None = None,
              elements: tuple[str, ...] = QM9_ELEMENTS) -> list[Path]:
    """``xyz_bytes`` as ``000000.xyz``, ... in ``out_dir``; the paths in molecule order."""
    contents = xyz_bytes(positions, atom_types, batch, comments, elements)
    return [_write(Path(out_dir) / name, lambda f, data=data: f.write(data))
            for name, data in zip(sample_file_names(len(contents), ".xyz"), contents)]


def xyz_bytes(positions, atom_types, batch=None, comments: Sequence[str] | None = None,
              elements: tuple[str, ...] = QM9_ELEMENTS) -> list[bytes]:
    """One standard XYZ file per molecule: atom count, comment line (default ``mol_<k>``), then
    ``Symbol x y z`` in Å."""
    positions, atom_types, bonds = _molecules(positions, atom_types, batch, elements)
    comments = _check_names(comments, bonds.num_molecules, "comments")
    contents = []
    for k in range(bonds.num_molecules):
        atoms = slice(int(bonds.atom_ptr[k]), int(bonds.atom_ptr[k + 1]))
        comment = (comments[k] if comments else f"mol_{k}").replace("\n", " ")
        lines = [str(atoms.stop - atoms.start), comment]
        lines += [f"{elements[t]} {x:.6f} {y:.6f} {z:.6f}"
                  for t, (x, y, z) in zip(atom_types[atoms].tolist(), positions[atoms].tolist())]
        contents.append(("\n".join(lines) + "\n").encode("utf-8"))
    return contents


def read_xyz(path) -> tuple[list[str], np.ndarray, str]:
    """(symbols, positions float64 [n, 3], comment) of a single-molecule XYZ file; ``DataError`` naming the
    file when it is not one (or holds NaN/inf), ``OSError`` naming it when it cannot be read."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise OSError(f"cannot read {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise data_error(path, f"not an XYZ file (not UTF-8 text: {describe(error)})") from None
    try:
        count = int(lines[0].split()[0])
    except (IndexError, ValueError) as error:
        raise data_error(path, f"not an XYZ file: no atom count on line 1 ({describe(error)})") from None
    rows = [line.split() for line in lines[2:2 + count]] if count >= 0 else []
    if len(rows) != count:
        raise data_error(path, f"header says {count} atoms, found {len(rows)} lines")
    try:
        coordinates = np.array([[float(v) for v in row[1:4]] for row in rows if len(row) >= 4], dtype=np.float64)
    except ValueError as error:
        raise data_error(path, f"not an XYZ file ({describe(error)})") from None
    if len(coordinates) != count:
        short = next(k for k, row in enumerate(rows) if len(row) < 4)
        raise data_error(path, f"atom line {short + 1}: expected 'symbol x y z', got {excerpt(' '.join(rows[short]))}")
    check_finite(coordinates, path, rows="atoms")
    return [row[0] for row in rows], coordinates.reshape(count, 3), lines[1] if len(lines) > 1 else ""


def rdkit_drawing():
    """RDKit's drawing module, imported when a grid is drawn: it links the X rendering library
    (libXrender), which headless machines often lack, and training and sampling need it nowhere else."""
    try:
        return importlib.import_module("rdkit.Chem.Draw")
    except ImportError as error:
        raise ImportError(f"the molecule grid PNG needs RDKit's drawing module, which failed to load ({error}); "
                          "install the X rendering library (e.g. apt-get install libxrender1)") from error


def _depiction(molecule: Chem.Mol, sanitized: bool, hydrogens: bool, cell_size: int, draw) -> Chem.Mol | None:
    """A drawable 2D copy, or None when even that fails (the cell is then left empty); ``draw``: ``rdkit_drawing()``."""
    rdMolDraw2D = draw.rdMolDraw2D
    try:
        depiction = Chem.Mol(molecule)
        if not hydrogens:
            depiction = Chem.RemoveHs(depiction, sanitize=sanitized)
        depiction.RemoveAllConformers()
        AllChem.Compute2DCoords(depiction)
        depiction = rdMolDraw2D.PrepareMolForDrawing(depiction, kekulize=False, addChiralHs=False)
        # A clump of over-bonded atoms can get coincident 2D coordinates, which only the drawing itself
        # rejects; one such cell would otherwise abort the whole grid.
        rdMolDraw2D.MolDraw2DCairo(cell_size, cell_size).DrawMolecule(depiction)
        return depiction
    except (ValueError, RuntimeError):
        return None


def write_grid_png(path, positions, atom_types, batch=None, **options) -> Path:
    """``grid_png_bytes`` written to ``path``."""
    data = grid_png_bytes(positions, atom_types, batch, **options)
    return _write(path, lambda f: f.write(data))


def grid_png_bytes(positions, atom_types, batch=None, legends: Sequence[str] | None = None,
                   per_row: int = 6, cell_size: int = 250, max_molecules: int = 48,
                   hydrogens: bool = False, elements: tuple[str, ...] = QM9_ELEMENTS) -> bytes:
    """PNG grid of 2D depictions of the first ``max_molecules`` molecules (inferred bonds, 2D
    coordinates from ``Compute2DCoords``; explicit H hidden unless ``hydrogens``, or the molecule is
    invalid, where they show what is wrong). Legends default
    to the heavy-atom SMILES, or ``invalid`` for molecules RDKit rejects, which are still drawn as
    built where possible and otherwise left as an empty, labelled cell."""
    molecules = _rdkit_molecules(positions, atom_types, batch, elements)[:max_molecules]
    legends = _check_names(legends[:max_molecules] if legends is not None else None,
                           len(molecules), "legends")
    draw = rdkit_drawing()
    drawn, labels = [], []
    with rdBase.BlockLogs():
        for k, (molecule, sanitized) in enumerate(molecules):
            depiction = _depiction(molecule, sanitized, hydrogens or not sanitized, cell_size, draw)  # show the defect
            drawn.append(depiction if depiction is not None else Chem.Mol())
            if legends is not None:
                labels.append(legends[k])
            elif sanitized:
                labels.append(Chem.MolToSmiles(Chem.RemoveHs(molecule)))
            else:
                labels.append("invalid" if depiction is not None else "invalid (not drawable)")
        per_row = max(1, min(per_row, len(drawn) or 1))
        image = draw.MolsToGridImage(drawn or [Chem.Mol()], molsPerRow=per_row,
                                     subImgSize=(cell_size, cell_size), legends=labels or [""], useSVG=False)
    _label_empty_cells(image, [k for k, m in enumerate(drawn) if m.GetNumAtoms() == 0], labels, per_row,
                       cell_size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _label_empty_cells(image: Image.Image, cells: list[int], labels: list[str], per_row: int, cell_size: int):
    """RDKit draws no legend under an empty molecule, so the grid would hide which cell failed."""
    pen = ImageDraw.Draw(image)
    for k in cells:
        row, column = divmod(k, per_row)
        pen.text(((column + 0.5) * cell_size, (row + 0.9) * cell_size), labels[k], fill="black", anchor="ms")


def _render_frame(figure: Figure, canvas: FigureCanvasAgg, frame: np.ndarray, symbols: list[str],
                  bonds: InferredBonds | None, limit: float, title: str) -> np.ndarray:
    figure.clear()
    axes = figure.add_subplot(projection="3d")
    pairs, orders = (bonds.pairs.tolist(), bonds.orders.tolist()) if bonds is not None else ([], [])
    for (i, j), order in zip(pairs, orders):
        axes.plot(*frame[[i, j]].T, color="#888888", linewidth=1.0 + order)
    axes.scatter(frame[:, 0], frame[:, 1], frame[:, 2], depthshade=False, edgecolors="black",
                 linewidths=0.4, c=[ELEMENT_COLORS.get(s, "#a0a0a0") for s in symbols],
                 s=[ELEMENT_SIZES.get(s, DEFAULT_SIZE) for s in symbols])
    axes.set(xlim=(-limit, limit), ylim=(-limit, limit), zlim=(-limit, limit))
    axes.set_box_aspect((1, 1, 1), zoom=1.4)
    axes.set_axis_off()
    axes.set_title(title, fontsize=9)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_chain_gif(path, frames, atom_types, **options) -> Path:
    """``chain_gif_bytes`` written to ``path``."""
    data = chain_gif_bytes(frames, atom_types, **options)
    return _write(path, lambda f: f.write(data))


def chain_gif_bytes(frames, atom_types, elements: tuple[str, ...] = QM9_ELEMENTS, frame_ms: int = 80,
                    last_frame_ms: int = 1500, size_px: int = 320, draw_bonds: bool = True) -> bytes:
    """GIF of one molecule along a denoising chain: ``frames`` [T, n, 3] (or a sequence of [n, 3]
    arrays), each a matplotlib 3D scatter coloured by element, centred on its own centre of mass
    with axis limits fixed over the chain. Bonds (EDM rule, per frame) are drawn when
    ``draw_bonds``; the last frame is held ``last_frame_ms``."""
    if not isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = [np.asarray(torch.as_tensor(f).detach().cpu(), dtype=np.float64) for f in frames]
        frames = np.stack(frames) if frames else np.zeros((0, len(atom_types), 3))
    chain = np.asarray(torch.as_tensor(frames).detach().cpu(), dtype=np.float64)
    types = torch.as_tensor(atom_types).cpu().long()
    if chain.ndim != 3 or chain.shape[2] != 3 or chain.shape[1] != len(types) or len(chain) == 0:
        raise ValueError(f"frames must be [T, {len(types)}, 3] with T >= 1, got {chain.shape}")
    chain = chain - chain.mean(axis=1, keepdims=True)
    finite = chain[np.isfinite(chain)]
    limit = float(np.abs(finite).max()) * 1.05 + 0.5 if finite.size else 1.0
    symbols = [elements[t] for t in types.tolist()]
    figure = Figure(figsize=(size_px / 80, size_px / 80), dpi=80)
    canvas = FigureCanvasAgg(figure)
    images = []
    for step, frame in enumerate(chain):
        bonds = infer_bonds(torch.from_numpy(frame), types, elements=elements) if draw_bonds else None
        images.append(_render_frame(figure, canvas, frame, symbols, bonds, limit, f"step {step + 1}/{len(chain)}"))
    return gif_bytes(images, frame_ms, last_frame_ms)
