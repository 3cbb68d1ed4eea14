"""Cameras on a sphere around the origin, looking at it (DreamFusion's random views), and their rays.

World frame: z up. A camera at azimuth φ, elevation θ and distance d sits at
d·(cos θ cos φ, cos θ sin φ, sin θ); azimuth 0 looks at the object's front (+x side) and gives the
", front view" prompt suffix. Camera frame as OpenGL's: it looks down its −z axis, x right, y up;
``rotation`` is camera-to-world with columns (right, up, back).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FRONT, SIDE, BACK = ", front view", ", side view", ", back view"
VIEW_SUFFIXES = (FRONT, SIDE, BACK)


@dataclass(frozen=True)
class Cameras:
    """A batch of N pinhole cameras: ``eye`` [N, 3], ``rotation`` [N, 3, 3] (camera-to-world), vertical
    field of view ``fov_y`` [N] in radians, and the orbit that placed them (degrees, distance) [N]."""

    eye: torch.Tensor
    rotation: torch.Tensor
    fov_y: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor
    distance: torch.Tensor

    def __len__(self) -> int:
        return len(self.eye)

    def to(self, device) -> "Cameras":
        return Cameras(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))

    def __getitem__(self, index) -> "Cameras":
        return Cameras(*(getattr(self, name)[index] for name in self.__dataclass_fields__))


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world rotations [N, 3, 3] (columns right, up, back) for cameras at ``eye`` [N, 3] looking
    at ``target`` (default the origin) with the world's z up. Straight up or down has no heading: refused."""
    target = torch.zeros_like(eye) if target is None else target.expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(forward)
    right = torch.linalg.cross(forward, world_up, dim=-1)
    if (right.norm(dim=-1) < 1e-6).any():
        raise ValueError("a camera looks straight up or down (elevation ±90°): its heading is undefined")
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(right, forward, dim=-1)
    return torch.stack([right, up, -forward], dim=-1)


def orbit_cameras(azimuth, elevation, distance, fov_y) -> Cameras:
    """Cameras at the given azimuths / elevations (degrees), distances and vertical fields of view
    (degrees), each broadcast to one batch, looking at the origin."""
    azimuth, elevation, distance, fov_y = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float32) for v in (azimuth, elevation, distance, fov_y)))
    azimuth, elevation, distance, fov_y = (v.reshape(-1) for v in (azimuth, elevation, distance, fov_y))
    phi, theta = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    eye = distance[:, None] * torch.stack([theta.cos() * phi.cos(), theta.cos() * phi.sin(), theta.sin()], -1)
    return Cameras(eye, look_at(eye), torch.deg2rad(fov_y), azimuth % 360.0, elevation, distance)


def _uniform(n: int, low_high, generator) -> torch.Tensor:
    low, high = (float(v) for v in low_high)
    if high < low:
        raise ValueError(f"a camera range must be (low, high) with low <= high, got {tuple(low_high)}")
    return low + (high - low) * torch.rand(n, generator=generator)


def sample_cameras(n: int, generator: torch.Generator | None = None, azimuth=(0.0, 360.0),
                   elevation=(-10.0, 45.0), distance=(3.0, 3.0), fov_y=(45.0, 45.0)) -> Cameras:
    """N cameras with each parameter uniform in its (low, high) range; the defaults are primitive_views'."""
    return orbit_cameras(*(_uniform(n, r, generator) for r in (azimuth, elevation, distance, fov_y)))


def camera_rays(cameras: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the pixel centres: origins and unit directions, each [N, H, W, 3] (row 0 at the top)."""
    device = cameras.eye.device
    tan = torch.tan(cameras.fov_y / 2)[:, None, None]
    rows = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    y = (1 - 2 * rows)[None, :, None] * tan
    x = (2 * cols - 1)[None, None, :] * tan * (width / height)
    local = torch.stack([x.expand(-1, height, -1), y.expand(-1, -1, width), -torch.ones_like(x * y)], -1)
    directions = torch.nn.functional.normalize(torch.einsum("nij,nhwj->nhwi", cameras.rotation, local), dim=-1)
    return cameras.eye[:, None, None, :].expand_as(directions), directions


def project(cameras: Cameras, points: torch.Tensor, height: int, width: int):
    """World points [P, 3] in each camera: (row, col) [N, P] in pixels (pixel centres at integers, the inverse
    of ``camera_rays``), the distance from the eye [N, P], and whether the point is in the image [N, P]."""
    local = torch.einsum("nji,npj->npi", cameras.rotation, points[None] - cameras.eye[:, None, :])
    ahead = local[..., 2] < 0
    tan = torch.tan(cameras.fov_y / 2)[:, None]
    depth = (-local[..., 2]).clamp_min(1e-9)
    x = local[..., 0] / depth / (tan * (width / height))
    y = local[..., 1] / depth / tan
    col, row = (x + 1) / 2 * width - 0.5, (1 - y) / 2 * height - 0.5
    inside = ahead & (col > -0.5) & (col < width - 0.5) & (row > -0.5) & (row < height - 0.5)
    return row, col, (points[None] - cameras.eye[:, None, :]).norm(dim=-1), inside


def turn(directions: torch.Tensor, angle: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Unit ``directions`` [N, 3] turned by ``angle`` [N] degrees about ``axis`` [N, 3] made perpendicular to
    them (Rodrigues' rotation about a perpendicular unit axis k: v cos a + (k × v) sin a)."""
    axis = axis - (axis * directions).sum(-1, keepdim=True) * directions
    axis = torch.nn.functional.normalize(axis, dim=-1)
    angle = torch.deg2rad(angle)[:, None]
    return directions * angle.cos() + torch.linalg.cross(axis, directions, dim=-1) * angle.sin()


def light_directions(cameras: Cameras, max_angle: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit directions towards a light [N, 3]: the direction from the origin to each camera turned by an
    angle uniform in [0, ``max_angle``] degrees about a random axis perpendicular to it."""
    to_camera = torch.nn.functional.normalize(cameras.eye, dim=-1)
    angle = (max_angle * torch.rand(len(cameras), generator=generator)).to(to_camera)
    return turn(to_camera, angle, torch.randn(len(cameras), 3, generator=generator).to(to_camera))


def view_suffix(azimuth: float) -> str:
    """DreamFusion's view-dependent prompt suffix: front for azimuth in [−45°, 45°), back for
    [135°, 225°), side otherwise (degrees, any turn)."""
    a = (float(azimuth) + 45.0) % 360.0   # front is now [0, 90), back [180, 270)
    if a < 90.0:
        return FRONT
    if 180.0 <= a < 270.0:
        return BACK
    return SIDE

