"""3D fields for score distillation: density σ(x) ≥ 0 and albedo a(x) ∈ [0, 1]³ over [−bound, bound]³.

The protocol the renderer and the exporter use: a module with ``bound`` whose ``forward(points [..., 3])``
returns ``(density [...], albedo [..., 3])``. Three trainable fields: a voxel grid (the CPU default, as DVGO /
Plenoxels; Magic3D's coarse stage is a grid too), a NeRF MLP on Fourier features (Mildenhall et al. 2020), and
a signed-distance grid rendered as a solid (``SDFVoxelField``, VolSDF's density). The first two start from
threestudio's density blob, σ_raw += λ(1 − |x|/r): an empty scene gives SDS nothing to shade, a blob at the
centre gives it a surface to carve. Density is softplus(σ_raw) (threestudio's default) or exp(σ_raw)
(stable-dreamfusion's and torch-ngp's): under exp an optimizer step scales the density rather than shifting it, so
dense and faint regions move at the same relative rate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from modalities.shape.mesh import grid_points


def blob_bias(points: torch.Tensor, density: float, radius: float) -> torch.Tensor:
    """threestudio's 'blob_magic3d' density bias λ(1 − |x|/r)."""
    return density * (1 - points.norm(dim=-1) / radius)


def inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    return value + torch.log(-torch.expm1(-value))


class TruncatedExp(torch.autograd.Function):
    """exp(x) whose gradient is exp(min(x, 15)) (torch-ngp's trunc_exp): a raw density that overshoots does not
    blow its own gradient up. The backward is built from differentiable ops, so normals by autograd still work."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


DENSITY_ACTIVATIONS = {"softplus": (F.softplus, inverse_softplus), "exp": (TruncatedExp.apply, torch.log)}


def activation_pair(name: str):
    """(activation, its inverse) for ``name`` in DENSITY_ACTIVATIONS, or a ValueError naming the choices."""
    if name not in DENSITY_ACTIVATIONS:
        raise ValueError(f"density_activation must be one of {sorted(DENSITY_ACTIVATIONS)}, got {name!r}")
    return DENSITY_ACTIVATIONS[name]


def _grid_sample(grid: torch.Tensor, points: torch.Tensor, bound: float) -> torch.Tensor:
    """Trilinear values [..., C] of a [1, C, R, R, R] grid over [−bound, bound]³ at points [..., 3]."""
    # grid_sample reads (x, y, z) as (W, H, D): flip so the coordinates index [x, y, z]
    where = (points / bound).flip(-1).reshape(1, -1, 1, 1, 3).to(grid.dtype)
    values = F.grid_sample(grid, where, mode="bilinear", padding_mode="border", align_corners=True)
    return values.reshape(grid.shape[1], -1).T.reshape(*points.shape[:-1], grid.shape[1])


def gaussian_blur(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """[1, C, R, R, R] filtered by a Gaussian of ``sigma`` cells per axis (separable, edges replicated); unchanged
    for sigma 0. A field whose values are a blur of its parameters has no per-cell freedom: SDS renders at the
    prior's resolution cannot see a one-cell speck, so nothing stops it from filling the grid with them."""
    if sigma <= 0:
        return grid
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=grid.dtype, device=grid.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = grid.shape[1]
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = len(taps)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius        # F.pad lists the last dim first
        weight = kernel.reshape(1, 1, *shape).expand(channels, 1, *shape)
        grid = F.conv3d(F.pad(grid, pad, mode="replicate"), weight, groups=channels)
    return grid


class VoxelField(nn.Module):
    """Density and albedo on an R³ grid over [−bound, bound]³, sampled trilinearly. Raw values pass through
    the density activation (softplus or exp) and a sigmoid (albedo); grid index [x, y, z] is the point (x
    slowest, z fastest, as ``modalities.shape.mesh.grid_points``).

    The density grid is the Gaussian blur (``gaussian_blur``) of its parameters, σ = ``smoothing`` in world
    units (0.08: about one pixel of a 32 px render at the object, two cells of the 64³ grid): without it SDS
    fills the grid with a speckled haze whose every iso-surface is a sponge (README). The box is ±1.25: the
    spec's sphere has radius 1, and a haze clipped at ±1 meshes as a rounded cube."""

    def __init__(self, resolution: int = 64, bound: float = 1.25, blob_density: float = 10.0,
                 blob_radius: float = 0.5, density_activation: str = "softplus", smoothing: float = 0.08):
        super().__init__()
        if resolution < 2:
            raise ValueError(f"field.resolution must be >= 2, got {resolution}")
        if smoothing < 0:
            raise ValueError(f"field.smoothing must be >= 0, got {smoothing}")
        self.bound, self.smoothing = float(bound), float(smoothing)
        self.activation, self.inverse_activation = activation_pair(density_activation)
        grid = grid_points(resolution, bound).reshape(resolution, resolution, resolution, 3)
        self.density_raw = nn.Parameter(blob_bias(grid, blob_density, blob_radius)[None, None])
        self.albedo_raw = nn.Parameter(torch.zeros(1, 3, resolution, resolution, resolution))

    @classmethod
    def from_values(cls, density: torch.Tensor, albedo: torch.Tensor, bound: float = 1.0,
                    density_activation: str = "softplus") -> "VoxelField":
        """A grid holding given values: density [R, R, R] ≥ 0, albedo [3, R, R, R] or one colour [3] in (0, 1)."""
        field = cls(resolution=density.shape[0], bound=bound, blob_density=0.0, density_activation=density_activation,
                    smoothing=0.0)
        albedo = albedo.reshape(3, 1, 1, 1).expand(3, *density.shape) if albedo.numel() == 3 else albedo
        with torch.no_grad():
            field.density_raw.copy_(field.inverse_activation(density.float().clamp_min(1e-6))[None, None])
            field.albedo_raw.copy_(torch.logit(albedo.float().clamp(1e-4, 1 - 1e-4))[None])
        return field

    @property
    def resolution(self) -> int:
        return self.density_raw.shape[-1]

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density_raw = gaussian_blur(self.density_raw, self.smoothing / _cell(self.bound, self.resolution))
        density = self.activation(_grid_sample(density_raw, points, self.bound)[..., 0])
        return density, torch.sigmoid(_grid_sample(self.albedo_raw, points, self.bound))

    def total_variation(self) -> torch.Tensor:
        """Mean squared difference between neighbouring cells of the raw density and albedo (Plenoxels)."""
        total = 0.0
        for grid in (self.density_raw, self.albedo_raw):
            for dim in (2, 3, 4):
                total = total + grid.diff(dim=dim).pow(2).mean()
        return total


class FourierFeatures(nn.Module):
    """γ(x) = (x, sin 2^k π x, cos 2^k π x) for k < L (Mildenhall et al. 2020, eq. 4)."""

    def __init__(self, num_frequencies: int):
        super().__init__()
        self.register_buffer("scales", math.pi * 2.0 ** torch.arange(num_frequencies), persistent=False)

    @property
    def out_features(self) -> int:
        return 3 + 6 * len(self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = (x[..., None] * self.scales).flatten(-2)
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class MLPField(nn.Module):
    """A NeRF-style MLP: Fourier features of x/bound → (density, albedo), with the same density blob."""

    def __init__(self, bound: float = 1.0, num_frequencies: int = 6, hidden: int = 64, layers: int = 3,
                 blob_density: float = 10.0, blob_radius: float = 0.5, density_activation: str = "softplus"):
        super().__init__()
        self.bound, self.blob_density, self.blob_radius = float(bound), blob_density, blob_radius
        self.activation = activation_pair(density_activation)[0]
        self.features = FourierFeatures(num_frequencies)
        width = [self.features.out_features] + [hidden] * layers
        blocks = [m for a, b in zip(width[:-1], width[1:]) for m in (nn.Linear(a, b), nn.SiLU())]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, 4))

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(self.features(points / self.bound))
        density = self.activation(out[..., 0] + blob_bias(points, self.blob_density, self.blob_radius))
        return density, torch.sigmoid(out[..., 1:])


SDF_UNIT = 0.2   # coarsest grid values are d / SDF_UNIT: an Adam step of lr 0.05 moves its surface by ~0.01


class SDFVoxelField(nn.Module):
    """A signed distance d (negative inside) and albedo on voxel grids, rendered with the density
    σ_max·sigmoid(−d/s) (VolSDF, Yariv et al. 2021; the density primitive_views draws its primitives with): a
    surface s thick, so no view can be explained by a haze.

    d is the sum of grids at ``levels`` resolutions, each upsampled trilinearly to the finest (a dense
    Instant-NGP pyramid), a level of resolution r in units of SDF_UNIT·r₀/r (r₀ the coarsest): a step moves
    the coarse cells most, so they reshape the whole solid (a box's corners, a torus's hole) while the fine
    ones add detail; one fine grid alone random-walks into per-cell noise under SDS. It starts as a sphere of
    ``radius`` in the coarsest level (the density fields' blob). ``eikonal()`` keeps |∇d| = 1 (Gropp et al.
    2020), without which d could flatten to a plateau of near-zero distance, a haze again; ``curvature()``
    penalises the one-cell bumps SDS leaves (it does not remove them all: README). ``smoothing`` (world units,
    default off: not yet measured here) blurs the summed d as the voxel field's density. The box is ±1.25: the
    spec's sphere has radius 1, and a field clipped at ±1 turns it into a rounded cube."""

    def __init__(self, resolution: int = 64, bound: float = 1.25, radius: float = 0.5, max_density: float = 200.0,
                 softness: float = 0.03, levels: tuple = (16, 32), smoothing: float = 0.0):
        super().__init__()
        sizes = sorted({int(r) for r in levels if int(r) < resolution}) + [int(resolution)]
        if sizes[0] < 3:
            raise ValueError(f"field.resolution and its levels must be >= 3, got {sizes}")
        if not softness > 0:
            raise ValueError(f"the SDF field's softness must be > 0, got {softness}")
        if smoothing < 0:
            raise ValueError(f"field.smoothing must be >= 0, got {smoothing}")
        self.bound, self.max_density, self.softness = float(bound), float(max_density), float(softness)
        self.smoothing = float(smoothing)
        coarse = grid_points(sizes[0], bound).reshape(*(sizes[0],) * 3, 3).norm(dim=-1) - radius
        self.sdf_levels = nn.ParameterList(
            [nn.Parameter((coarse / SDF_UNIT)[None, None])]
            + [nn.Parameter(torch.zeros(1, 1, r, r, r)) for r in sizes[1:]])
        self.albedo_raw = nn.Parameter(torch.zeros(1, 3, resolution, resolution, resolution))

    @property
    def resolution(self) -> int:
        return self.albedo_raw.shape[-1]

    def distance_grid(self) -> torch.Tensor:
        """d on the finest grid, [1, 1, R, R, R]: the levels upsampled and summed."""
        size = (self.resolution,) * 3
        coarsest = self.sdf_levels[0].shape[-1]
        distance = sum(_upsampled(level, size) * (SDF_UNIT * coarsest / level.shape[-1]) for level in self.sdf_levels)
        return gaussian_blur(distance, self.smoothing / self._cell())

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = _grid_sample(self.distance_grid(), points, self.bound)[..., 0]
        # exp(log sigmoid): as primitives.PrimitiveBatch, the normal stays exact deep inside
        density = self.max_density * torch.exp(F.logsigmoid(-distance / self.softness))
        return density, torch.sigmoid(_grid_sample(self.albedo_raw, points, self.bound))

    def total_variation(self) -> torch.Tensor:
        """Plenoxels' TV of the albedo only: the distance's smoothness is the levels' and the eikonal term's job."""
        return sum(self.albedo_raw.diff(dim=dim).pow(2).mean() for dim in (2, 3, 4))

    def eikonal(self) -> torch.Tensor:
        """mean (|∇d| − 1)² over the finest grid's interior, ∇d by central differences."""
        d, cell = self.distance_grid()[0, 0], self._cell()
        gradient = torch.stack([(d[_shifted(axis, 1)] - d[_shifted(axis, -1)]) / (2 * cell) for axis in range(3)], -1)
        return (gradient.norm(dim=-1) - 1).pow(2).mean()

    def curvature(self) -> torch.Tensor:
        """mean |Δd| over the finest grid's interior (Neuralangelo's curvature loss, Li et al. 2023): a bump of
        one cell costs ~1/cell² more than a primitive's faces and edges."""
        d, cell = self.distance_grid()[0, 0], self._cell()
        centre = d[_shifted(0, 0)]
        laplacian = sum(d[_shifted(axis, 1)] + d[_shifted(axis, -1)] - 2 * centre for axis in range(3)) / cell ** 2
        return laplacian.abs().mean()

    def _cell(self) -> float:
        return _cell(self.bound, self.resolution)


def _cell(bound: float, resolution: int) -> float:
    """The spacing of a resolution³ grid over [−bound, bound]³ (corner-aligned, as grid_points)."""
    return 2 * bound / (resolution - 1)


def _upsampled(grid: torch.Tensor, size: tuple) -> torch.Tensor:
    return grid if grid.shape[-3:] == size else F.interpolate(grid, size=size, mode="trilinear", align_corners=True)


def _shifted(axis: int, offset: int) -> tuple:
    """The index of a grid's interior moved by ``offset`` cells along ``axis`` (finite differences)."""
    index = [slice(1, -1)] * 3
    index[axis] = slice(1 + offset, (-1 + offset) or None)
    return tuple(index)
