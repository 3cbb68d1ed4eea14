"""What ``mldm sds`` leaves per prompt, and the sample directory it goes into.

Per prompt (stem ``000000``, ...): ``<stem>.ply/.obj/.glb`` (the coloured mesh: the density level whose
silhouette matches the renders, ``export.choose_level``, that level set's visual hull, or the soft visual hull
of the renders, ``export.hull_mesh``), ``<stem>_turntable.gif/.mp4`` (Lambertian), ``<stem>_field.safetensors``
and ``<stem>_loss.png``; one line in samples.jsonl (``file``: the PLY, or null when the field held no surface,
then ``mesh_error`` says why). ``sds.json`` marks the directory as an
``mldm sds`` output (``mldm evaluate samples_dir=`` then uses the mesh judge) and records the run's settings.

The directory goes through the one sample-directory writer (``shared.io.sample_dir``): rewritten whole after
every finished prompt, so an interruption keeps the prompts finished so far, and its overwrite policy holds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from shared.io.sample_dir import INDEX_FILE, read_index, write_sample_dir

from .cameras import orbit_cameras
from .distill import DistillSettings
from .carve import carving_cameras
from .export import choose_level, field_mesh, hull_mesh, loss_plot, save_field, save_mesh, turntable
from .mesh_judge import MARKER_FILE
from .render import render

RENDER_PX = 64                              # mesh-level views and turntable frames (32 px is too coarse to look at)
MESH_VIEW_AZIMUTHS = tuple(45.0 * k for k in range(8))   # 8 fixed views on two rings: the level is chosen
MESH_VIEW_ELEVATIONS = (30.0, 0.0) * 4                   # from silhouettes seen from all round
TURNTABLE_ELEVATION = 15.0


def stem_of(index: int) -> str:
    return f"{index:06d}"


def artefacts(record: dict) -> list[str]:
    """The files of one prompt besides its PLY (the sample file of the index)."""
    stem = record["stem"]
    mesh = [f"{stem}.obj", f"{stem}.glb"] if record.get("mesh_error") is None else []
    return mesh + [f"{stem}_turntable.gif", f"{stem}_turntable.mp4", f"{stem}_field.safetensors", f"{stem}_loss.png"]


MESH_METHODS = ("level", "level_hull", "hull")


@torch.no_grad()
def cut_mesh(field, settings: DistillSettings, resolution: int, device, method: str = "level_hull"):
    """(the coloured mesh, its density level or None). ``level``: the iso-surface at the density level chosen
    from 8 fixed views' opacity and ray maxima (``export.field_mesh``); ``level_hull``: the visual hull of that
    level set from ``carve``'s 40 views; ``hull``: the soft visual hull of their rendered opacity."""
    if method not in MESH_METHODS:
        raise ValueError(f"mesh_method must be one of {', '.join(MESH_METHODS)}, got {method!r}")
    carve = dict(pixels=max(32, resolution), num_samples=2 * settings.ray_samples)
    carving = carving_cameras(settings.distance, settings.fov_y)
    if method == "hull":
        return hull_mesh(field, carving, resolution, device, **carve), None
    views = orbit_cameras(MESH_VIEW_AZIMUTHS, MESH_VIEW_ELEVATIONS, settings.distance, settings.fov_y)
    out = render(field, views.to(device), RENDER_PX, RENDER_PX, num_samples=2 * settings.ray_samples, shading="albedo")
    level = choose_level(out["max_density"], out["opacity"][:, 0])
    if method == "level_hull":
        return hull_mesh(field, carving, resolution, device, level=level, **carve), level
    return field_mesh(field, level, resolution, device), level


def lambertian_renderer(field, settings: DistillSettings, device):
    """render_rgb for ``export.turntable``: one camera -> uint8 [1, H, W, 3], lit from the camera."""
    @torch.no_grad()
    def render_rgb(cameras):
        out = render(field, cameras.to(device), RENDER_PX, RENDER_PX, num_samples=settings.ray_samples,
                     shading="lambertian", background=settings.background)
        return (out["rgb"].permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return render_rgb


def export_prompt(work_dir: Path, stem: str, field, losses: list[float], meta: dict, settings: DistillSettings,
                  mesh_resolution: int, turntable_frames: int, device, mesh_method: str = "level_hull") -> dict:
    """Write one prompt's files into ``work_dir``; returns its index record (without ``file``)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    record = {"stem": stem, "prompt": meta["prompt"], "seed": meta["seed"], "steps": meta["step"]}
    try:
        mesh, level = cut_mesh(field, settings, mesh_resolution, device, mesh_method)
        save_mesh(mesh, work_dir / stem)
        record["mesh_method"] = mesh_method
        if level is not None:
            record["level"] = level
    except ValueError as error:   # no surface: the other files still show what the field became
        record["mesh_error"] = str(error)
    turntable(lambertian_renderer(field, settings, device), work_dir / f"{stem}_turntable", frames=turntable_frames,
              elevation=TURNTABLE_ELEVATION, distance=settings.distance, fov_y=settings.fov_y)
    save_field(work_dir / f"{stem}_field.safetensors", field.state_dict(), meta)
    loss_plot(losses, work_dir / f"{stem}_loss.png", title=f"SDS loss: {meta['prompt']}")
    return record


def finished(out_dir: Path, run: dict) -> dict[str, dict]:
    """stem -> index record of the prompts ``out_dir`` already holds for this run (same settings, prior and
    field, per ``sds.json``); nothing when it holds none, or another run's."""
    try:
        marker = json.loads((out_dir / MARKER_FILE).read_text(encoding="utf-8"))
        records = read_index(out_dir) if (out_dir / INDEX_FILE).is_file() else []
    except (OSError, ValueError):   # absent or damaged: nothing is known to be done
        return {}
    if not isinstance(marker, dict) or marker.get("run") != run:
        return {}
    return {r["stem"]: r for r in records if isinstance(r.get("stem"), str)
            and all((out_dir / name).is_file() for name in artefacts(r) + ([r["file"]] if r["file"] else []))}


def write_outputs(out_dir: Path, done: list[tuple[dict, Path]], run: dict) -> Path:
    """The sample directory of the finished prompts, in order: (record, the folder holding its files) each."""
    files, records, previews = [], [], {}
    for record, source in done:
        stem, has_mesh = record["stem"], record.get("mesh_error") is None
        files.append((f"{stem}.ply", (source / f"{stem}.ply").read_bytes()) if has_mesh else (None, None))
        records.append({k: v for k, v in record.items() if k != "file"})
        previews.update({name: _copier(source / name) for name in artefacts(record)})
    marker = json.dumps({"written_by": "mldm sds", "judge": "mldm evaluate samples_dir=<this folder>: the mesh judge",
                         "run": run}, indent=1)
    previews[MARKER_FILE] = lambda handle: handle.write(marker.encode("utf-8"))
    seeds = np.asarray([r["seed"] for r, _ in done], dtype=np.int64)
    return write_sample_dir(out_dir, files, records, {"seed": seeds}, previews=previews)


def _copier(path: Path):
    def write(handle):
        with open(path, "rb") as source:
            shutil.copyfileobj(source, handle)
    return write
