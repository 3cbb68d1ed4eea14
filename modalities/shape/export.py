"""3D shape sample directories (the contract of ``shared.io.sample_dir``): one file per sample (``000000.ply``
binary point clouds, or ``000000.obj`` / ``.ply`` meshes), a ``preview.png`` grid of matplotlib
renders, a ``samples.jsonl`` index (``file`` and ``label`` / ``prompt`` / ``seed`` / extra fields
where given) and the raw arrays in ``samples.npz``. ``load_shape_samples`` reads one back and
``read_point_cloud`` reads a user's (partial) point cloud for shape completion.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import trimesh
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from shared.io.data_errors import check_finite, data_error, describe
from shared.io.animation import chain_preview
from shared.io.sample_dir import ARRAYS_FILE, INDEX_FILE, read_arrays, read_index, sample_file_names, write_sample_dir

PREVIEW_FILE = "preview.png"
RESERVED_KEYS = {"file", "label", "prompt", "seed", "empty"}
VIEW = (20.0, 45.0)                 # fixed (elevation, azimuth) so previews of different runs compare
POINT_FORMATS = (".ply", ".xyz", ".txt", ".npy")


def _points_array(points) -> np.ndarray:
    """[N, P, 3] torch or numpy -> float32 numpy; rejects NaN/inf naming the first bad sample."""
    array = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected points [N, P, 3], got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=(1, 2)))
    if len(bad):
        raise ValueError(f"sample {bad[0]} has NaN/inf points ({len(bad)} bad samples)")
    return array


def _records(n: int, labels, label_names, seeds, extra) -> list[dict]:
    extra = extra or {}
    for name, values in (("labels", labels), ("seeds", seeds), *extra.items()):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} samples")
    if label_names is not None and labels is None:
        raise ValueError("label_names given without labels")
    if RESERVED_KEYS & set(extra):
        raise ValueError(f"extra keys {sorted(RESERVED_KEYS & set(extra))} clash with index fields")
    records = []
    for i in range(n):
        record: dict = {}
        if labels is not None:
            record["label"] = int(labels[i])
            if label_names is not None:
                record["prompt"] = str(label_names[int(labels[i])])
        if seeds is not None:
            record["seed"] = int(seeds[i])
        for key, values in extra.items():                   # numpy / torch scalars -> plain JSON
            record[key] = values[i].item() if hasattr(values[i], "item") else values[i]
        try:
            json.dumps(record)
        except TypeError as error:                          # fail before any file is written
            raise ValueError(f"sample {i}: index fields must be JSON values ({error})") from None
        records.append(record)
    return records


def _decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int):
    """Vertex clustering on ever coarser grids until at most ``max_faces`` remain (preview only:
    matplotlib draws every polygon in Python, and a few thousand per tile look the same)."""
    low, span = vertices.min(0), np.ptp(vertices, 0).max() + 1e-9
    for resolution in (64, 32, 16, 8):
        if len(faces) <= max_faces:
            break
        cells = np.minimum(((vertices - low) / span * resolution).astype(np.int64), resolution - 1)
        _, inverse = np.unique((cells[:, 0] * resolution + cells[:, 1]) * resolution + cells[:, 2],
                               return_inverse=True)
        inverse = inverse.reshape(-1)
        merged = np.zeros((inverse.max() + 1, 3))
        np.add.at(merged, inverse, vertices)
        merged /= np.bincount(inverse)[:, None]
        remapped = inverse[faces]
        keep = (remapped != remapped[:, [1, 2, 0]]).all(axis=1)      # drop collapsed triangles
        vertices, faces = merged, remapped[keep]
    return vertices, faces


def _render_preview(points: np.ndarray, titles: list, meshes=None, per_row: int = 8, max_points: int = 2048,
                    max_faces: int = 2000):
    """Grid of 3D renders on an Agg canvas of its own (no pyplot, so global state is untouched), as a
    ``write(binary_file)`` of its PNG."""
    n = len(points)
    cols, tile = min(per_row, max(n, 1)), 2.0
    rows = max(1, -(-n // cols))
    figure = Figure(figsize=(cols * tile, rows * tile), dpi=80)
    canvas = FigureCanvasAgg(figure)
    elevation, azimuth = np.radians(VIEW)                  # light from the camera, a bit above
    light = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                      np.sin(elevation) + 0.8])
    light /= np.linalg.norm(light)
    rng = np.random.default_rng(0)                     # same subsample every time
    for i in range(n):
        axes = figure.add_subplot(rows, cols, i + 1, projection="3d")
        mesh = None if meshes is None else meshes[i]
        if mesh is not None and len(mesh.faces):
            vertices, faces = _decimate(np.asarray(mesh.vertices), np.asarray(mesh.faces), max_faces)
            triangles = vertices[faces]
            normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
            normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
            shade = 0.25 + 0.75 * np.abs(normals @ light)   # two-sided: MC winding may be flipped
            colors = np.clip(shade[:, None] * np.array([0.55, 0.7, 0.9]), 0, 1)
            axes.add_collection3d(Poly3DCollection(triangles, facecolors=colors, linewidths=0))
        else:
            cloud = points[i]
            if len(cloud) > max_points:
                cloud = cloud[rng.choice(len(cloud), max_points, replace=False)]
            axes.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], s=0.5, c=cloud[:, 2], cmap="viridis",
                         depthshade=False, linewidths=0)
        axes.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
        axes.set_box_aspect((1, 1, 1), zoom=1.3)
        axes.view_init(*VIEW)
        axes.set_axis_off()
        if titles[i] is not None:
            axes.text2D(0.5, 0.98, str(titles[i]), transform=axes.transAxes, ha="center", va="top",
                        fontsize=8)                          # inside the tile: never clipped
    figure.subplots_adjust(0, 0, 1, 1, 0, 0)
    return canvas.print_png


def cloud_frames(clouds, size_px: int = 240, max_points: int = 2048) -> list[np.ndarray]:
    """GIF frames of one cloud along a denoising chain: ``clouds`` [T, P, 3], the preview's fixed view."""
    figure = Figure(figsize=(size_px / 80, size_px / 80), dpi=80)
    canvas = FigureCanvasAgg(figure)
    keep = np.random.default_rng(0).permutation(np.asarray(clouds).shape[1])[:max_points]
    frames = []
    for step, cloud in enumerate(np.asarray(clouds, dtype=np.float32)[:, keep]):
        figure.clear()
        axes = figure.add_subplot(projection="3d")
        axes.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], s=0.5, c=cloud[:, 2], cmap="viridis", depthshade=False,
                     linewidths=0)
        axes.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
        axes.set_box_aspect((1, 1, 1), zoom=1.3)
        axes.view_init(*VIEW)
        axes.set_axis_off()
        axes.set_title(f"step {step + 1}/{len(clouds)}", fontsize=8)
        canvas.draw()
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return frames


def slice_frames(values, bound: float, size_px: int = 240) -> list[np.ndarray]:
    """GIF frames of a signed distance field's slice along a denoising chain: ``values`` [T, R, R] (rows: y,
    columns: x) over [-bound, bound]², red outside, blue inside on one colour scale for the whole chain, the
    zero level set (the surface's cross-section) drawn black."""
    values = np.asarray(values, dtype=np.float32)
    limit = float(np.abs(values[np.isfinite(values)]).max(initial=0.0)) or 1.0
    figure = Figure(figsize=(size_px / 80, size_px / 80), dpi=80)
    canvas = FigureCanvasAgg(figure)
    frames = []
    for step, field in enumerate(values):
        figure.clear()
        axes = figure.add_axes((0, 0, 1, 0.9))
        extent = (-bound, bound, -bound, bound)
        axes.imshow(field, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower", extent=extent)
        if field.min() < 0 < field.max():
            axes.contour(field, levels=[0.0], colors="black", linewidths=1.0, origin="lower", extent=extent)
        axes.set_axis_off()
        figure.suptitle(f"z = 0 slice, step {step + 1}/{len(values)}", fontsize=8)
        canvas.draw()
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return frames


def _write_directory(out_dir: Path, kind: str, files: list, records: list[dict], points: np.ndarray,
                     labels, meshes, preview_max: int, chain=None) -> Path:
    """The shared tail of both exporters: the preview renders, the arrays and the index (``chain``: GIF frames
    of sample 0's denoising trajectory, written as ``chain.gif``)."""
    titles = [r.get("prompt", r.get("label")) for r in records[:preview_max]]
    preview = _render_preview(points[:preview_max], titles, None if meshes is None else meshes[:preview_max])
    arrays = {"points": points, "kind": np.array(kind)}
    if labels is not None:
        arrays["labels"] = np.asarray([int(x) for x in labels], dtype=np.int64)
    return write_sample_dir(out_dir, files, records, arrays, previews={PREVIEW_FILE: preview, **chain_preview(chain)})


def export_point_clouds(out_dir, points, labels=None, label_names: list[str] | None = None,
                        seeds=None, extra: dict[str, list] | None = None,
                        preview_max: int = 32, chain: list[np.ndarray] | None = None) -> Path:
    """Write a sample directory for point clouds ``points`` [N, P, 3]: binary PLY per sample,
    ``samples.npz`` (``points`` float32, ``labels`` int64), ``samples.jsonl`` and ``preview.png``
    (first ``preview_max`` clouds). ``label_names[label]`` becomes each line's ``prompt``."""
    out_dir = Path(out_dir)
    array = _points_array(points)
    records = _records(len(array), labels, label_names, seeds, extra)
    files = [(name, trimesh.PointCloud(cloud).export(file_type="ply"))
             for name, cloud in zip(sample_file_names(len(array), ".ply"), array)]
    return _write_directory(out_dir, "point_clouds", files, records, array, labels, None, preview_max, chain)


def export_meshes(out_dir, meshes: list, points, labels=None, label_names: list[str] | None = None,
                  seeds=None, mesh_format: str = "obj", extra: dict[str, list] | None = None,
                  preview_max: int = 32, chain: list[np.ndarray] | None = None) -> Path:
    """Write a sample directory for ``meshes`` (trimesh.Trimesh, or None) with ``points`` [N, P, 3]
    sampled from them by the caller. An empty mesh (e.g. marching cubes found no surface) gets no
    file but still an index line, ``{"file": null, "empty": true, ...}``, so lines stay aligned
    with the arrays; its preview tile scatters its points instead."""
    if mesh_format not in ("obj", "ply"):
        raise ValueError(f"mesh_format must be 'obj' or 'ply', got {mesh_format!r}")
    out_dir = Path(out_dir)
    array = _points_array(points)
    if len(meshes) != len(array):
        raise ValueError(f"{len(meshes)} meshes for {len(array)} point sets")
    records = _records(len(array), labels, label_names, seeds, extra)
    for i, mesh in enumerate(meshes):
        if mesh is not None and len(mesh.vertices) and not np.isfinite(mesh.vertices).all():
            raise ValueError(f"mesh {i} has NaN/inf vertices")
    files: list[tuple[str | None, bytes | None]] = []
    for name, mesh, record in zip(sample_file_names(len(array), f".{mesh_format}"), meshes, records):
        if mesh is None or len(mesh.faces) == 0:
            files.append((None, None))
            record["empty"] = True
            continue
        data = mesh.export(file_type=mesh_format)
        files.append((name, data.encode("utf-8") if isinstance(data, str) else data))
    return _write_directory(out_dir, "meshes", files, records, array, labels, meshes, preview_max, chain)


def load_meshes(out_dir) -> list[trimesh.Trimesh]:
    """The meshes the index names, in order; an empty ``trimesh.Trimesh()`` for ``"file": null``."""
    out_dir = Path(out_dir)
    meshes = []
    for record in read_index(out_dir):
        if record.get("file") is None:
            meshes.append(trimesh.Trimesh())
            continue
        path = out_dir / record["file"]
        try:
            meshes.append(trimesh.load(path, force="mesh"))
        except Exception as error:                           # trimesh raises many types
            raise data_error(path, f"unreadable mesh ({describe(error)})") from None
    return meshes


def load_shape_samples(out_dir, meshes: bool = True) -> dict:
    """Read a directory back: ``points`` float32 Tensor [N, P, 3], ``labels`` LongTensor or None,
    ``index`` (the jsonl dicts), ``kind`` and ``meshes`` (list of Trimesh for mesh directories when
    ``meshes`` is true, else None)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such directory")
    path = out_dir / ARRAYS_FILE
    loaded = read_arrays(out_dir, required=("points",))
    records = read_index(out_dir)
    if len(records) != len(loaded["points"]):
        raise data_error(out_dir / INDEX_FILE, f"{len(records)} lines but {path} holds {len(loaded['points'])} samples")
    kind = str(loaded.get("kind", "point_clouds"))
    labels = loaded.get("labels")
    return {"points": torch.from_numpy(loaded["points"].astype(np.float32)),
            "labels": None if labels is None else torch.from_numpy(labels.astype(np.int64)),
            "index": records, "kind": kind,
            "meshes": load_meshes(out_dir) if meshes and kind == "meshes" else None}


def read_point_cloud(path) -> np.ndarray:
    """A single point cloud as float32 [P, 3] from .ply (vertices of a cloud or mesh), .npy
    ([P, 3]) or .xyz / .txt (whitespace columns x y z, or 6 with normals/colours after xyz).
    A missing file raises ``FileNotFoundError``, anything else wrong (unreadable, wrong shape, no points,
    NaN/inf, or beyond float32's range) ``DataError``, each naming the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POINT_FORMATS:
        raise data_error(path, f"unsupported point cloud format (use one of {POINT_FORMATS})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        array = _read_points(path, suffix)
    except Exception as error:
        raise data_error(path, f"unreadable point cloud ({describe(error)})") from None
    if suffix in (".xyz", ".txt") and array.ndim == 2 and array.shape[1] == 6:
        array = array[:, :3]
    if array.size == 0:
        raise data_error(path, "no points")
    if array.ndim != 2 or array.shape[1] != 3:
        raise data_error(path, f"expected 3 columns (x y z), got shape {array.shape}")
    with np.errstate(over="ignore"):                         # beyond float32's range becomes inf: refused below
        array = np.ascontiguousarray(array, dtype=np.float32)
    check_finite(array, path, rows="points")
    return array


def _read_points(path: Path, suffix: str) -> np.ndarray:
    if suffix == ".ply":
        return np.asarray(trimesh.load(path).vertices, dtype=np.float64)
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.dtype.kind not in "biuf":                   # strings, structs, complex: not coordinates
            raise ValueError(f"array of dtype {array.dtype}, expected numbers")
        return np.asarray(array, dtype=np.float64)
    with warnings.catch_warnings():                          # an empty file only warns
        warnings.simplefilter("ignore", UserWarning)
        return np.loadtxt(path, dtype=np.float64, ndmin=2)
