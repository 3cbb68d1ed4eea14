"""Meshing what the renders show: the soft visual hull, space carving (Kutulakos & Seitz 2000) on rendered opacity.

A distilled field is often a soft haze (its density ~1 over a thick shell): every iso-surface of it is noise, yet
its renders show a clean object. Here a grid point's occupancy is the smallest rendered opacity where it projects,
over the views that see it (a point no view sees is outside), and the mesh is its ½ level set, so the mesh's
silhouette in each carving view is the rendered {opacity ≥ ½} by construction. Concavities no view sees into stay
filled (a visual hull's limit); the torus hole is seen from above.
"""
from __future__ import annotations

import numpy as np
import torch

from modalities.shape.mesh import grid_points

from .cameras import Cameras, orbit_cameras, project
from .render import render

# 12 views on each of three rings and 2 from above and below (±75°: straight up or down has no heading). A hull
# from finitely many views circumscribes the object: 12 per ring keep a sphere's hull within 1/cos 15° ≈ 1.035.
CARVE_AZIMUTHS = tuple(30.0 * k for k in range(12)) * 3 + (0.0, 90.0) * 2
CARVE_ELEVATIONS = (0.0,) * 12 + (40.0,) * 12 + (-40.0,) * 12 + (75.0, 75.0, -75.0, -75.0)


def carving_cameras(distance: float, fov_y: float) -> Cameras:
    return orbit_cameras(CARVE_AZIMUTHS, CARVE_ELEVATIONS, distance, fov_y)


@torch.no_grad()
def hull_occupancy(field, cameras: Cameras, resolution: int, pixels: int = 128, num_samples: int = 192,
                   device="cpu", level: float | None = None) -> np.ndarray:
    """min over the views that see it of the rendered opacity where a grid point projects (bilinear), on the
    resolution³ grid over [−bound, bound]³, float32 [R, R, R] in [0, 1]; a point no view sees is 0.

    With a density ``level``, each view's silhouette is binary: the pixels the render shows (opacity ≥ ½) and
    those whose ray reaches the level set {σ ≥ level}. The level set adds the thin parts that opacity, a sum
    along the ray, loses (a cone's apex); the opacity closes the pores of a hazy level set, which would
    otherwise carve tunnels through the hull. The hull has no inside, so the sponge a haze's level set is
    inside does not reach the mesh."""
    points = grid_points(resolution, float(field.bound)).to(device)
    occupancy = torch.ones(len(points), device=device)
    seen = torch.zeros(len(points), dtype=torch.bool, device=device)
    for index in range(len(cameras)):
        view = cameras[index:index + 1].to(device)
        out = render(field, view, pixels, pixels, num_samples=num_samples, shading="albedo")
        opacity = out["opacity"]
        if level is not None:
            opacity = ((opacity >= 0.5) | (out["max_density"] >= level)[:, None]).float()
        row, col, _, visible = project(view, points, pixels, pixels)
        where = torch.stack([(col + 0.5) / pixels * 2 - 1, (row + 0.5) / pixels * 2 - 1], -1)   # x, y in [−1, 1]
        sampled = torch.nn.functional.grid_sample(opacity, where[:, None], mode="bilinear", align_corners=False,
                                                  padding_mode="border")[0, 0, 0]
        occupancy = torch.where(visible[0], torch.minimum(occupancy, sampled), occupancy)
        seen |= visible[0]
    occupancy = torch.where(seen, occupancy, torch.zeros_like(occupancy))
    return occupancy.reshape(resolution, resolution, resolution).cpu().numpy()
