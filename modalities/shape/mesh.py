"""Meshes from signed distance fields: evaluate f on a regular grid over [-bound, bound]³ and run
marching cubes (Lorensen & Cline 1987; scikit-image's Lewiner variant, which resolves the ambiguous
cases so the surface has consistent topology).

The grid's outermost layer is set to "outside" (as Occupancy Networks pad their grid), so a field that
is negative up to the box wall still gives a closed surface; a field with no zero crossing gives an
empty mesh rather than an error.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes


def grid_points(resolution: int, bound: float) -> torch.Tensor:
    """The resolution³ grid over [-bound, bound]³ as [resolution³, 3] (x slowest, z fastest)."""
    axis = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def evaluate_grid(sdf: Callable[[torch.Tensor], torch.Tensor], resolution: int, bound: float,
                  chunk: int = 65_536, device="cpu") -> np.ndarray:
    """sdf(points [Q, 3]) -> [Q] evaluated on the grid, in chunks -> float32 [R, R, R]."""
    points = grid_points(resolution, bound)
    values = torch.cat([sdf(points[i:i + chunk].to(device)).float().cpu() for i in range(0, len(points), chunk)])
    return values.view(resolution, resolution, resolution).numpy()


def mesh_from_grid(values: np.ndarray, bound: float, level: float = 0.0) -> trimesh.Trimesh:
    """Marching cubes on an SDF grid over [-bound, bound]³ (negative inside) -> a trimesh in that frame."""
    resolution = values.shape[0]
    if not np.isfinite(values).all():
        raise ValueError("the SDF grid contains NaN/inf values")
    values = values.copy()
    outside = max(float(values.max()), level + 1e-3)
    for axis in range(3):  # close every surface at the box wall
        index = [slice(None)] * 3
        for end in (0, -1):
            index[axis] = end
            values[tuple(index)] = outside
    if values.min() >= level:
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64))
    spacing = (2 * bound / (resolution - 1),) * 3
    vertices, faces, _, _ = marching_cubes(values, level=level, spacing=spacing)
    # scikit-image's default ("descent") winding gives outward normals when inside is below the level
    return trimesh.Trimesh(vertices=vertices - bound, faces=faces, process=True)


def drop_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """Keep the connected components whose area is at least ``min_fraction`` of the largest one's:
    removes the small "floaters" a learned SDF leaves where its sign is wrong far from the surface."""
    if min_fraction <= 0 or len(mesh.faces) == 0:
        return mesh
    # face labels by scipy's connected components: linear in faces, where trimesh's split builds one mesh per
    # component (a hazy field's thousands of specks exhausted 24 GiB that way)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    area = np.bincount(labels, weights=mesh.area_faces)
    if len(area) <= 1:
        return mesh
    keep = area[labels] >= min_fraction * area.max()
    return mesh.submesh([np.flatnonzero(keep)], append=True)


def extract_mesh(sdf: Callable[[torch.Tensor], torch.Tensor], resolution: int = 64, bound: float = 1.1,
                 level: float = 0.0, chunk: int = 65_536, device="cpu",
                 min_component_fraction: float = 0.0) -> trimesh.Trimesh:
    mesh = mesh_from_grid(evaluate_grid(sdf, resolution, bound, chunk, device), bound, level)
    return drop_small_components(mesh, min_component_fraction)


def sample_mesh_points(mesh: trimesh.Trimesh, num_points: int, seed: int) -> np.ndarray:
    """num_points uniform on the surface (area-weighted); an empty mesh gives the origin repeated, so
    the sample still counts against the metrics instead of silently vanishing."""
    if len(mesh.faces) == 0 or mesh.area <= 0:
        return np.zeros((num_points, 3), np.float32)
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return points.astype(np.float32)
