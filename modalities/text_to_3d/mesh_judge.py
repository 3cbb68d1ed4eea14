"""The mesh judge of ``mldm sds`` output: is a distilled mesh the prompted primitive, in the prompted colour?

Built from the 3D primitives spec, with no learned classifier (the mesh counterpart of ``metrics.py``'s view
judge). Kind: the kind of the nearest mesh of a bank of spec primitives (``BANK_PER_KIND`` random draws per
kind of ``primitive_mesh``, axis-aligned as the spec, and as the field's world frame with z up) by Chamfer
distance between surface samples of ``SURFACE_POINTS`` points, the sample normalised exactly as the spec
normalises its meshes (``normalize_mesh``: bounding-box centre at the origin, farthest vertex at 1). Colour:
the dominant channel of the mean vertex colour, valid only if it dominates the runner-up ``COLOR_DOMINANCE``
times. A sample without a mesh (its field held no surface) is judged wrong on both.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import trimesh

from modalities.shape.data import PRIMITIVE_KINDS, normalize_mesh, primitive_mesh, sample_surface
from modalities.shape.metrics import pairwise_chamfer
from shared.io.data_errors import data_error, describe
from shared.io.sample_dir import read_index

from .metrics import parse_prompt

BANK_SEED, BANK_PER_KIND, SURFACE_POINTS = 4242, 20, 2048
COLOR_DOMINANCE = 1.5
MARKER_FILE = "sds.json"     # what `mldm sds` leaves in its sample directory: `mldm evaluate` judges it here


@lru_cache(maxsize=2)
def reference_bank(per_kind: int = BANK_PER_KIND, num_points: int = SURFACE_POINTS) -> tuple[torch.Tensor, np.ndarray]:
    """(surface clouds [K·per_kind, P, 3] of fresh spec primitives, their kind indices), drawn once under
    ``BANK_SEED``: a stream of its own, so never one of the spec data set's meshes."""
    rng = np.random.default_rng(BANK_SEED)
    clouds, kinds = [], []
    for index, kind in enumerate(PRIMITIVE_KINDS):
        for _ in range(per_kind):
            clouds.append(sample_surface(primitive_mesh(kind, rng), num_points, rng))
            kinds.append(index)
    return torch.from_numpy(np.stack(clouds)), np.asarray(kinds)


def surface_cloud(mesh: trimesh.Trimesh, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """``num_points`` area-uniform points of ``mesh`` normalised as the spec's meshes, float32 [P, 3]."""
    return sample_surface(normalize_mesh(mesh), num_points, rng)


def mesh_color(mesh: trimesh.Trimesh) -> int:
    """The index in COLORS of the mean vertex colour's dominant channel, or −1 where it does not dominate
    the runner-up ``COLOR_DOMINANCE`` times (a grey, or a mix such as yellow)."""
    rgb = np.asarray(mesh.visual.vertex_colors, dtype=np.float64)[:, :3]
    if len(rgb) == 0:
        return -1
    mean = rgb.mean(0)
    order = np.argsort(mean)[::-1]
    return int(order[0]) if mean[order[0]] >= COLOR_DOMINANCE * mean[order[1]] and mean[order[0]] > 0 else -1


def judge_meshes(meshes, per_kind: int = BANK_PER_KIND, num_points: int = SURFACE_POINTS,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Per mesh (None: a sample without one): ``kind`` and ``color`` indices (−1: none) and ``chamfer``, the
    Chamfer distance to the nearest bank mesh (NaN without a mesh). Sample i's surface points come from
    ``default_rng([seed, i])``, so a verdict does not depend on the other samples."""
    n = len(meshes)
    kind, color, chamfer = np.full(n, -1), np.full(n, -1), np.full(n, np.nan)
    present = [i for i, mesh in enumerate(meshes) if mesh is not None]
    if present:
        bank, bank_kinds = reference_bank(per_kind, num_points)
        clouds = np.stack([surface_cloud(meshes[i], num_points, np.random.default_rng([seed, i])) for i in present])
        distances = pairwise_chamfer(torch.from_numpy(clouds), bank).numpy()       # [n present, bank]
        nearest = distances.argmin(1)
        kind[present] = bank_kinds[nearest]
        chamfer[present] = distances[np.arange(len(present)), nearest]
        color[present] = [mesh_color(meshes[i]) for i in present]
    return {"kind": kind, "color": color, "chamfer": chamfer}


def score(verdict: dict[str, np.ndarray], prompts) -> dict:
    """n, shape_accuracy, color_accuracy, prompt_accuracy (both as prompted) and mean_chamfer (over the
    samples with a mesh; None without any) of ``judge_meshes``' verdict against prompts "a {color} {shape}"."""
    wanted = np.array([parse_prompt(p) for p in prompts], dtype=np.int64).reshape(-1, 2)
    n = len(verdict["kind"])
    if len(wanted) != n:
        raise ValueError(f"{len(wanted)} prompts for {n} meshes")
    color_hit, kind_hit = verdict["color"] == wanted[:, 0], verdict["kind"] == wanted[:, 1]
    rate = (lambda hits: float(hits.mean()) if n else 0.0)
    measured = verdict["chamfer"][np.isfinite(verdict["chamfer"])]
    return {"n": n, "shape_accuracy": rate(kind_hit), "color_accuracy": rate(color_hit),
            "prompt_accuracy": rate(color_hit & kind_hit),
            "mean_chamfer": float(measured.mean()) if len(measured) else None}


def load_colored_mesh(path: Path) -> trimesh.Trimesh:
    """A sample's mesh as written (no processing: its vertex colours stay those of its vertices)."""
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # each format's parser raises its own types
        raise data_error(path, f"cannot read mesh ({describe(error)})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or not mesh.area > 0:
        raise data_error(path, "not a triangle mesh with a surface")
    return mesh


def evaluate_samples(samples_dir: Path) -> dict:
    """The judge's metrics of an ``mldm sds`` output directory (its samples.jsonl: ``file``, ``prompt``)."""
    samples_dir = Path(samples_dir)
    records = read_index(samples_dir)
    for number, record in enumerate(records, 1):
        if not isinstance(record.get("prompt"), str):
            raise data_error(samples_dir / "samples.jsonl", f"line {number}: no prompt")
        try:
            parse_prompt(record["prompt"])
        except ValueError as error:
            raise data_error(samples_dir / "samples.jsonl", f"line {number}: {error}; the mesh judge scores "
                             f"only the primitive spec's prompts") from None
    meshes = [load_colored_mesh(samples_dir / r["file"]) if r["file"] else None for r in records]
    return score(judge_meshes(meshes), [r["prompt"] for r in records])

