"""The primitives of the 3D spec as exact signed distance functions, batched: one primitive per item.

The spec builds them as trimesh meshes (``modalities.shape.data.primitive_mesh``: axis-aligned, bounding
box centred, farthest vertex at distance 1); here each is its smooth limit (a true sphere, round
cylinders and cones), with the same parameter ranges and the same normalisation, so a renderer can
evaluate thousands of them at once. Distances after Quilez's closed forms; a primitive scaled by k has
sdf(x) = k·sdf₁(x / k).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from modalities.shape.data import PRIMITIVE_KINDS

SPHERE, BOX, CYLINDER, CONE, TORUS = range(len(PRIMITIVE_KINDS))
TORUS_MAJOR = 0.7


def draw_primitive(kind: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The spec's random parameters for one primitive, in ``primitive_mesh``'s order of draws ->
    (shape parameters [3], the scale that puts its farthest point at distance 1). Parameters: sphere
    (1, 0, 0); box half-extents; cylinder and cone (radius, half-height, 0); torus (major, minor, 0)."""
    if kind == SPHERE:
        params = np.array([1.0, 0.0, 0.0])
        return params, 1.0
    if kind == BOX:
        half = rng.uniform(0.5, 1.0, size=3) / 2
        return half, 1.0 / float(np.linalg.norm(half))
    if kind in (CYLINDER, CONE):
        radius, height = rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.2)
        return np.array([radius, height / 2, 0.0]), 1.0 / float(np.hypot(radius, height / 2))
    if kind == TORUS:
        minor = rng.uniform(0.15, 0.35)
        return np.array([TORUS_MAJOR, minor, 0.0]), 1.0 / (TORUS_MAJOR + minor)
    raise ValueError(f"unknown primitive kind index {kind}; expected 0..{len(PRIMITIVE_KINDS) - 1}")


def _box_2d(q: torch.Tensor) -> torch.Tensor:
    """Signed distance from offsets q = |p| − half-extents (any dimension, last axis) of a box."""
    return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)


def _segment_distance(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ab = b - a
    h = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (p - a - h[..., None] * ab).norm(dim=-1)


def _cone(rho: torch.Tensor, z: torch.Tensor, radius: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Solid cone, base disc of ``radius`` at z = −half, apex at z = +half: in the (ρ, z) half-plane the
    distance to the base and slant edges, negative inside the triangle."""
    p = torch.stack([rho, z], -1)
    base_centre = torch.stack([torch.zeros_like(radius), -half], -1)
    corner = torch.stack([radius, -half], -1)
    apex = torch.stack([torch.zeros_like(radius), half], -1)
    distance = torch.minimum(_segment_distance(p, base_centre, corner), _segment_distance(p, corner, apex))
    inside = (z >= -half) & (rho <= radius * (half - z) / (2 * half))
    return torch.where(inside, -distance, distance)


_DISTANCES = (
    lambda p, rho, z, a, b, half: p.norm(dim=-1) - a,                           # sphere of radius a
    lambda p, rho, z, a, b, half: _box_2d(p.abs() - half),                      # box of half-extents
    lambda p, rho, z, a, b, half: _box_2d(torch.stack([rho - a, z.abs() - b], -1)),  # cylinder (radius, half-height)
    lambda p, rho, z, a, b, half: _cone(rho, z, a.expand_as(rho), b.expand_as(rho)),  # cone (radius, half-height)
    lambda p, rho, z, a, b, half: torch.stack([rho - a, z], -1).norm(dim=-1) - b,     # torus (major, minor)
)


def primitive_sdf(points: torch.Tensor, kind: torch.Tensor, params: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Signed distances [N, M] of points [N, M, 3] to item n's primitive (kind [N], params [N, 3],
    scale [N]); negative inside. Each kind's formula runs on its own items only."""
    out = points.new_empty(points.shape[:-1])
    for index, distance in enumerate(_DISTANCES):
        rows = (kind == index).nonzero().flatten()
        if len(rows):
            k = scale[rows, None]
            p = points[rows] / k[..., None]
            a, b = params[rows, 0, None], params[rows, 1, None]
            local = distance(p, p[..., :2].norm(dim=-1), p[..., 2], a, b, params[rows, None, :])
            out = out.index_put((rows,), k * local)
    return out


class PrimitiveBatch(nn.Module):
    """N analytic primitives, one per rendered view: the density σ_max·sigmoid(−sdf/s) (a solid whose
    surface is s thick, well under a pixel at 32², as VolSDF turns distances into density) and one albedo
    each. ``forward(points [N, M, 3])`` evaluates item n's primitive at row n's points."""

    def __init__(self, kind, params, scale, albedo, max_density: float = 200.0, softness: float = 0.003):
        super().__init__()
        self.bound = 1.0
        self.kind = torch.as_tensor(kind, dtype=torch.long)
        self.params = torch.as_tensor(params, dtype=torch.float32)
        self.scale = torch.as_tensor(scale, dtype=torch.float32)
        self.albedo = torch.as_tensor(albedo, dtype=torch.float32)
        self.max_density, self.softness = max_density, softness

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sdf = primitive_sdf(points, self.kind, self.params, self.scale)
        # exp(log sigmoid): its gradient (the normal) stays exact a few samples deep, where 1 − sigmoid
        # rounds to 0 in float32
        density = self.max_density * torch.exp(torch.nn.functional.logsigmoid(-sdf / self.softness))
        return density, self.albedo[:, None, :].expand(*points.shape[:-1], 3)
