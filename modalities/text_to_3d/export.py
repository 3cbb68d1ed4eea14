"""What a text-to-3D run leaves behind: a coloured mesh (PLY / OBJ / GLB) cut from the trained density
field, the field itself (``field.safetensors``), a turntable (GIF + MP4) and a plot of the SDS loss.

The mesh's iso-level is chosen from the renders (``choose_level``): the level whose silhouette best matches
the rendered opacity. threestudio's default (the mean of the positive grid densities) is what its users
report breaks exported meshes (threestudio issue #52): it depends on how much of the box holds a faint haze.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage
import torch
import trimesh
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from modalities.shape.mesh import drop_small_components, evaluate_grid, mesh_from_grid
from modalities.text_to_3d.cameras import Cameras, orbit_cameras
from modalities.text_to_3d.carve import hull_occupancy
from modalities.video.files import write_mp4
from shared.io.animation import gif_bytes
from shared.io.atomic_files import atomic_write, atomic_write_path
from shared.io.data_errors import data_error, describe
from shared.training.checkpoint import weights_problem

FIELD_FILE = "field.safetensors"
META_KEY = "mldm"              # the safetensors header-metadata key holding the JSON metadata
MESH_FORMATS = ("ply", "obj", "glb")
MIN_VIDEO_PX = 128             # tiny renders are enlarged to at least this (players and people need pixels)
CHUNK = 65_536


def _numpy(values) -> np.ndarray:
    return values.detach().float().cpu().numpy() if torch.is_tensor(values) else np.asarray(values, np.float64)


def choose_level(ray_max_density, opacity, threshold: float = 0.5) -> float:
    """The density level for marching cubes whose silhouette best matches the rendered one.

    ``ray_max_density`` [N, H, W]: the largest density along each pixel's ray; ``opacity`` [N, H, W]: the
    rendered alpha. A pixel is inside the level-τ mesh's silhouette iff its ray's max density is >= τ, the
    rendered silhouette is {opacity >= threshold}; the level maximising their IoU (over all N views) is
    returned. Every distinct positive ray maximum is tried (the masks only change there; one sort, so this
    is exact and as cheap as ~64 sampled candidates). Ties go to the lower median of the tied candidates,
    the middle of the plateau. The level returned lies midway between the chosen ray maximum and the next
    smaller one (or 0): in the gap, so grid noise does not decide which side of it a ray falls.
    """
    peak, alpha = _numpy(ray_max_density), _numpy(opacity)
    if peak.shape != alpha.shape:
        raise ValueError(f"ray_max_density {list(peak.shape)} and opacity {list(alpha.shape)} differ in shape")
    if not (np.isfinite(peak).all() and np.isfinite(alpha).all()):
        raise ValueError("ray_max_density or opacity holds NaN/inf")
    opaque = (alpha >= threshold).ravel()
    if not opaque.any():
        raise ValueError(f"no pixel has opacity >= {threshold}: the field is empty, there is no surface to mesh")
    levels, below, iou = _iou_per_level(peak.ravel(), opaque)
    tied = np.flatnonzero(iou >= iou.max() - 1e-12)
    pick = tied[(len(tied) - 1) // 2]
    return float((levels[pick] + below[pick]) / 2)


def _iou_per_level(peak: np.ndarray, opaque: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every distinct positive value v of ``peak``: v, the next smaller value (>= 0) and the IoU of
    {peak >= v} with ``opaque``. Sorted descending, {peak >= v} is a prefix, so counts are cumulative sums."""
    order = np.argsort(-peak, kind="stable")
    values, hits = peak[order], opaque[order]
    inside = np.arange(1, len(values) + 1)
    intersection = np.cumsum(hits)
    group_end = np.r_[values[1:] != values[:-1], True]    # the prefix {peak >= v} ends at v's last copy
    keep = group_end & (values > 0)
    if not keep.any():
        raise ValueError("no ray meets a positive density: the field is empty, there is no surface to mesh")
    index = np.flatnonzero(keep)
    below = np.maximum(np.r_[values[1:], 0.0][index], 0.0)
    iou = intersection[index] / (inside[index] + opaque.sum() - intersection[index])
    return values[index], below, iou


def field_mesh(field: torch.nn.Module, level: float, resolution: int = 96, device="cpu",
               min_component_fraction: float = 0.05) -> trimesh.Trimesh:
    """The outer surface {density = level} of ``field`` over [-field.bound, field.bound]³ by marching cubes,
    without the specks of haze smaller than ``min_component_fraction`` of the largest part's area, with the
    field's albedo at each vertex as uint8 RGBA vertex colours. No surface at that level: ValueError.

    Cavities are filled first: a hollow no ray from outside can reach is not part of what any render shows,
    and a distilled solid is often a shell (SDS only sees its outside), whose inner wall would double the mesh."""
    if not (math.isfinite(level) and level > 0):
        raise ValueError(f"the density level must be a positive number, got {level}")
    # level - density is negative inside, the sign convention mesh_from_grid expects
    values = evaluate_grid(lambda p: level - field(p)[0], resolution, float(field.bound), chunk=CHUNK, device=device)
    if values.min() >= 0:
        raise ValueError(f"no surface at density level {level:g}: the field's densest grid point has density "
                         f"{float(level - values.min()):g} (choose a lower level, or a finer resolution than {resolution})")
    return _colored_surface(field, filled_cavities(values), min_component_fraction, device)


def filled_cavities(values: np.ndarray) -> np.ndarray:
    """A grid (negative inside) whose enclosed outside regions are made inside: the same sign change where the
    outside is connected to the box wall, none around a hollow. The filled cells keep their magnitude."""
    inside = values < 0
    cavity = scipy.ndimage.binary_fill_holes(inside) & ~inside
    return np.where(cavity, -np.abs(values) - 1e-6, values)


def hull_mesh(field: torch.nn.Module, cameras: Cameras, resolution: int = 96, device="cpu",
              min_component_fraction: float = 0.05, pixels: int = 128, num_samples: int = 192,
              level: float | None = None) -> trimesh.Trimesh:
    """The surface where the soft visual hull of ``cameras``' renders (``pixels``², ``num_samples`` per ray) is ½
    (``carve.hull_occupancy``): what the renders show, however hazy the density; with a density ``level``, the
    hull of what they show or the level set {σ ≥ level} reaches. Vertex colours and speck removal as
    ``field_mesh``."""
    occupancy = hull_occupancy(field, cameras, resolution, pixels, num_samples, device, level)
    if occupancy.max() < 0.5:
        seen = "at opacity >= 0.5" if level is None else f"at opacity >= 0.5 or density >= {level:g}"
        raise ValueError(f"no point is seen {seen} from every view: the field is empty, there is no surface to mesh")
    return _colored_surface(field, 0.5 - occupancy, min_component_fraction, device)


def _colored_surface(field, values: np.ndarray, min_component_fraction: float, device) -> trimesh.Trimesh:
    """Marching cubes of ``values`` (negative inside) over the field's box, specks dropped, albedo colours."""
    mesh = drop_small_components(mesh_from_grid(values, float(field.bound), level=0.0), min_component_fraction)
    if len(mesh.faces) == 0:
        raise ValueError("the surface is empty at this grid resolution (choose a finer one)")
    mesh.visual.vertex_colors = _vertex_colors(field, np.asarray(mesh.vertices), device)
    return mesh


@torch.no_grad()
def _vertex_colors(field: torch.nn.Module, vertices: np.ndarray, device) -> np.ndarray:
    points = torch.as_tensor(vertices, dtype=torch.float32)
    albedo = torch.cat([field(points[i:i + CHUNK].to(device))[1].float().cpu() for i in range(0, len(points), CHUNK)])
    rgb = (albedo.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)


def save_mesh(mesh: trimesh.Trimesh, stem: Path) -> list[Path]:
    """``<stem>.ply`` (binary), ``<stem>.obj`` (``v x y z r g b`` lines) and ``<stem>.glb`` (COLOR_0), each
    with the vertex colours and written atomically; returns the paths."""
    paths = []
    for file_type in MESH_FORMATS:
        data = mesh.export(file_type=file_type)
        data = data.encode("utf-8") if isinstance(data, str) else data
        path = Path(stem).with_name(f"{Path(stem).name}.{file_type}")
        atomic_write(path, lambda file, data=data: file.write(data))
        paths.append(path)
    return paths


def save_field(path: Path, field_state: dict[str, torch.Tensor], meta: dict) -> None:
    """A field's state_dict as safetensors with ``meta`` (JSON) in the header's metadata: one file, atomically."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in field_state.items()}
    metadata = {META_KEY: json.dumps(meta)}
    atomic_write_path(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def load_field(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of a ``save_field`` file. Missing: FileNotFoundError; truncated, corrupt or without
    mldm's metadata: one DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such field file")
    problem = weights_problem(path)   # the cheap check of the checkpoints: header and length agree
    if problem is not None:
        raise data_error(path, f"not a complete safetensors field file: {problem}")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (OSError, SafetensorError) as error:
        raise data_error(path, f"unreadable safetensors field file ({describe(error)})") from None
    if META_KEY not in metadata:
        raise data_error(path, f"no '{META_KEY}' metadata in the safetensors header: not written by save_field")
    try:
        meta = json.loads(metadata[META_KEY])
    except json.JSONDecodeError as error:
        raise data_error(path, f"garbled '{META_KEY}' metadata ({describe(error)})") from None
    if not isinstance(meta, dict):
        raise data_error(path, f"the '{META_KEY}' metadata is a JSON {type(meta).__name__}, not an object")
    return tensors, meta


def turntable(render_rgb: Callable[[Cameras], np.ndarray], out_stem: Path, frames: int = 24,
              elevation: float = 15.0, distance: float = 3.0, fov_y: float = 45.0, fps: int = 12) -> list[Path]:
    """Render ``frames`` views at azimuths 0, 360/frames, ... (one ``render_rgb`` call per view, so a
    volume renderer's memory stays that of one image) -> ``<stem>.gif`` and ``<stem>.mp4``."""
    if frames < 1:
        raise ValueError(f"a turntable needs at least one frame, got {frames}")
    cameras = orbit_cameras(torch.arange(frames) * (360.0 / frames), elevation, distance, fov_y)
    images = np.concatenate([_checked_frames(render_rgb(cameras[i:i + 1])) for i in range(frames)])
    images = _video_sized(images)
    stem = Path(out_stem)
    gif, mp4 = stem.with_name(f"{stem.name}.gif"), stem.with_name(f"{stem.name}.mp4")
    data = gif_bytes(images, frame_ms=round(1000 / fps), last_frame_ms=round(1000 / fps))  # a loop: no held frame
    atomic_write(gif, lambda file: file.write(data))
    write_mp4(mp4, images, fps=fps, lossless=False)   # yuv420p: what every player opens
    return [gif, mp4]


def _checked_frames(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != 1 or images.shape[-1] != 3:
        raise ValueError(f"render_rgb must return uint8 [1, H, W, 3] for one camera, got {images.dtype} "
                         f"{list(images.shape)}")
    return images


def _video_sized(images: np.ndarray) -> np.ndarray:
    """Nearest-neighbour enlargement to >= MIN_VIDEO_PX on the short side (pixels stay crisp squares), then
    even sizes (yuv420p's 2x2 chroma blocks need them) by repeating the last row / column."""
    factor = max(1, math.ceil(MIN_VIDEO_PX / min(images.shape[1:3])))
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    pad = ((0, 0), (0, images.shape[1] % 2), (0, images.shape[2] % 2), (0, 0))
    return np.pad(images, pad, mode="edge")


def loss_plot(values: Sequence[float], path: Path, title: str = "SDS loss") -> None:
    """A PNG of the raw per-step values and their moving average (window: 1/20 of the run, at least 1)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"loss_plot needs a non-empty sequence of numbers, got shape {list(values.shape)}")
    figure = Figure(figsize=(6, 3.5), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = np.arange(1, len(values) + 1)
    axes.plot(steps, values, lw=0.8, alpha=0.35, color="tab:blue", label="per step")
    window = max(1, len(values) // 20)
    if window > 1:    # SDS losses are noisy: the trend is the average, "valid" so its ends are not biased
        average = np.convolve(values, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1:], average, lw=1.8, color="tab:blue", label=f"mean of {window}")
    axes.set(title=title, xlabel="step", ylabel="loss")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda file: canvas.print_png(file))
