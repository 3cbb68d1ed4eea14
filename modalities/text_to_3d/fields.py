"""3D fields for score distillation: density σ(x) ≥ 0 and albedo a(x) ∈ [0, 1]³ over [−bound, bound]³.

The protocol the renderer and the exporter use: a module with ``bound`` whose ``forward(points [..., 3])``
returns ``(density [...], albedo [..., 3])``. Two trainable fields: a voxel grid (the CPU default, as
DVGO / Plenoxels; Magic3D's coarse stage is a grid too) and a NeRF MLP on Fourier features (Mildenhall et
al. 2020). Both start from threestudio's density blob, σ_raw += λ(1 − |x|/r): an empty scene gives SDS
nothing to shade, a blob at the centre gives it a surface to carve. Density is softplus(σ_raw) (threestudio's
default) or exp(σ_raw) (stable-dreamfusion's and torch-ngp's): under exp an optimizer step scales the density
rather than shifting it, so dense and faint regions move at the same relative rate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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


class VoxelField(nn.Module):
    """Density and albedo on an R³ grid over [−bound, bound]³, sampled trilinearly. Raw values pass through
    the density activation (softplus or exp) and a sigmoid (albedo); grid index [x, y, z] is the point (x
    slowest, z fastest, as ``modalities.shape.mesh.grid_points``)."""

    def __init__(self, resolution: int = 64, bound: float = 1.0, blob_density: float = 10.0,
                 blob_radius: float = 0.5, density_activation: str = "softplus"):
        super().__init__()
        if resolution < 2:
            raise ValueError(f"field.resolution must be >= 2, got {resolution}")
        self.bound = float(bound)
        self.activation, self.inverse_activation = activation_pair(density_activation)
        axis = torch.linspace(-bound, bound, resolution)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
        self.density_raw = nn.Parameter(blob_bias(grid, blob_density, blob_radius)[None, None])
        self.albedo_raw = nn.Parameter(torch.zeros(1, 3, resolution, resolution, resolution))

    @classmethod
    def from_values(cls, density: torch.Tensor, albedo: torch.Tensor, bound: float = 1.0,
                    density_activation: str = "softplus") -> "VoxelField":
        """A grid holding given values: density [R, R, R] ≥ 0, albedo [3, R, R, R] or one colour [3] in (0, 1)."""
        field = cls(resolution=density.shape[0], bound=bound, blob_density=0.0, density_activation=density_activation)
        albedo = albedo.reshape(3, 1, 1, 1).expand(3, *density.shape) if albedo.numel() == 3 else albedo
        with torch.no_grad():
            field.density_raw.copy_(field.inverse_activation(density.float().clamp_min(1e-6))[None, None])
            field.albedo_raw.copy_(torch.logit(albedo.float().clamp(1e-4, 1 - 1e-4))[None])
        return field

    @property
    def resolution(self) -> int:
        return self.density_raw.shape[-1]

    def _sample(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # grid_sample reads (x, y, z) as (W, H, D): flip so the coordinates index [x, y, z]
        where = (points / self.bound).flip(-1).reshape(1, -1, 1, 1, 3).to(grid.dtype)
        values = F.grid_sample(grid, where, mode="bilinear", padding_mode="border", align_corners=True)
        return values.reshape(grid.shape[1], -1).T.reshape(*points.shape[:-1], grid.shape[1])

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density = self.activation(self._sample(self.density_raw, points)[..., 0])
        return density, torch.sigmoid(self._sample(self.albedo_raw, points))

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
