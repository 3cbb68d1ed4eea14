"""Differentiable volume rendering in torch (Max 1995; NeRF, Mildenhall et al. 2020, eq. 3).

Per ray, S samples in the field's box (stratified: one uniform draw per bin, or the bin midpoints);
αₖ = 1 − exp(−σₖ δ), Tₖ = Πⱼ<ₖ (1 − αⱼ), C = Σ Tₖ αₖ cₖ + (1 − Σ Tₖ αₖ)·background. Shading as DreamFusion:
``albedo`` (c = a), ``lambertian`` (c = a·(ambient + diffuse·max(0, n·l))) or ``textureless`` (the same
with a = 1), the normal n = −∇σ/|∇σ| by autograd, so shading gradients reach the geometry.
"""
from __future__ import annotations

import torch

from .cameras import Cameras, camera_rays

SHADINGS = ("albedo", "lambertian", "textureless")
PRIMITIVE_VIEWS_LIGHT = (0.3, 0.7)   # ambient, diffuse: the primitive_views spec's albedo × (0.3 + 0.7 n·l)


def box_interval(origins: torch.Tensor, directions: torch.Tensor, bound: float):
    """Entry and exit distances of rays through [−bound, bound]³ (slab method); rays that miss get an empty
    interval (far = near)."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (-bound - origins) / safe, (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, torch.maximum(far, near)


def _sample_distances(near, far, num_samples: int, generator) -> torch.Tensor:
    """[..., S] distances, one per equal bin of [near, far]: uniform in it (generator given) or its midpoint."""
    shape = (*near.shape, num_samples)
    u = torch.rand(shape, generator=generator).to(near) if generator is not None else torch.full(shape, 0.5).to(near)
    bins = torch.arange(num_samples, device=near.device, dtype=near.dtype)
    return near[..., None] + (far - near)[..., None] * (bins + u) / num_samples


def _field_with_normals(field, points: torch.Tensor, want_normals: bool):
    """(density, albedo, normals or None). Normals need ∇σ even under no_grad; during training the graph is
    kept so the shading's gradient reaches the density."""
    if not want_normals:
        density, albedo = field(points)
        return density, albedo, None
    training = torch.is_grad_enabled()
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        density, albedo = field(points)
        (gradient,) = torch.autograd.grad(density.sum(), points, create_graph=training)
    normals = -torch.nn.functional.normalize(gradient, dim=-1, eps=1e-12)
    if not training:
        density, albedo = density.detach(), albedo.detach()
    return density, albedo, normals


def composite(density, colour, distances, delta):
    """Alpha compositing along the last sample axis -> (colour [..., 3], opacity, depth)."""
    alpha = 1.0 - torch.exp(-density * delta[..., None])
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * transmittance
    return (weights[..., None] * colour).sum(-2), weights.sum(-1), (weights * distances).sum(-1)


def _background(background, rgb: torch.Tensor) -> torch.Tensor:
    """An RGB [3], per-view [N, 3] or per-pixel [N, H, W, 3] background -> [N, HW, 3] like ``rgb``."""
    n, pixels = rgb.shape[:2]
    if background is None:
        return torch.zeros_like(rgb)
    background = torch.as_tensor(background).to(rgb)
    if background.shape == (3,):
        return background.expand_as(rgb)
    if background.shape == (n, 3):
        return background[:, None, :].expand_as(rgb)
    return background.reshape(n, pixels, 3)


def render(field, cameras: Cameras, height: int, width: int, *, num_samples: int = 64,
           generator: torch.Generator | None = None, shading: str = "lambertian", light: torch.Tensor | None = None,
           ambient: float = 0.3, diffuse: float = 0.7, background=None) -> dict[str, torch.Tensor]:
    """Render ``field`` from ``cameras``. ``light``: unit directions towards a directional light, [N, 3]
    (default: towards each camera); ``background``: an RGB [3], per-view [N, 3] or per-pixel [N, H, W, 3]
    colour in [0, 1] (default black); ``generator``: stratified samples (None: bin midpoints, deterministic).

    Returns ``rgb`` [N, 3, H, W] in [0, 1], ``opacity`` and ``depth`` [N, 1, H, W], and ``max_density``
    [N, H, W], the largest density along each ray (an iso-level's silhouette is where it exceeds the level).
    """
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}")
    n = len(cameras)
    origins, directions = (r.reshape(n, height * width, 3) for r in camera_rays(cameras, height, width))
    near, far = box_interval(origins, directions, field.bound)
    distances = _sample_distances(near, far, num_samples, generator)               # [N, HW, S]
    points = origins[..., None, :] + directions[..., None, :] * distances[..., None]
    density, albedo, normals = _field_with_normals(field, points.reshape(n, -1, 3), shading != "albedo")
    density, albedo = density.reshape(distances.shape), albedo.reshape(*distances.shape, 3)
    if shading == "albedo":
        colour = albedo
    else:
        light = torch.nn.functional.normalize(cameras.eye, dim=-1) if light is None else light
        lambert = (normals.reshape(*distances.shape, 3) * light.to(normals)[:, None, None, :]).sum(-1).clamp_min(0)
        shade = (ambient + diffuse * lambert)[..., None]
        colour = shade * (albedo if shading == "lambertian" else torch.ones_like(albedo))
    rgb, opacity, depth = composite(density, colour, distances, (far - near) / num_samples)
    rgb = rgb + (1.0 - opacity[..., None]) * _background(background, rgb)
    image = (lambda v, c: v.reshape(n, height, width, c).permute(0, 3, 1, 2))
    return {"rgb": image(rgb, 3), "opacity": image(opacity[..., None], 1), "depth": image(depth[..., None], 1),
            "max_density": density.amax(-1).reshape(n, height, width)}
