"""The signed-distance field against closed forms: VolSDF's density of a sphere, the eikonal term, the level
pyramid, and the exported zero level set."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from modalities.text_to_3d.cameras import orbit_cameras
from modalities.text_to_3d.command import build_field, field_spec
from modalities.text_to_3d.distill import DistillSettings
from modalities.text_to_3d.export import field_mesh
from modalities.shape.mesh import grid_points
from modalities.text_to_3d.fields import SDF_UNIT, SDFVoxelField
from modalities.text_to_3d.render import render
from modalities.text_to_3d.sds_output import cut_mesh


def _random_points(count: int, low: float, high: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    radii = low + (high - low) * torch.rand(count, generator=generator)
    return directions * radii[:, None], radii


def test_starts_as_a_sphere_with_volsdf_density():
    field = SDFVoxelField(resolution=32, levels=(), radius=0.5, softness=0.03, max_density=200.0, bound=1.0)
    points, radii = _random_points(2000, 0.35, 0.75)
    with torch.no_grad():
        density, albedo = field(points)
    distance = -0.03 * torch.logit(density / 200.0, eps=0)     # σ = σ_max·sigmoid(−d/s) inverted
    assert float((distance - (radii - 0.5)).abs().max()) < 0.01
    assert torch.allclose(albedo, torch.full_like(albedo, 0.5))


def test_eikonal_and_curvature_of_closed_forms():
    """A plane: |∇d| = 1, Δd = 0. A sphere: |∇d| = 1, Δd = 2/|x|. Twice a distance: (|∇(2d)| − 1)² = 1."""
    field = SDFVoxelField(resolution=32, levels=(), bound=1.0)
    x = grid_points(32, 1.0).reshape(32, 32, 32, 3)
    with torch.no_grad():
        field.sdf_levels[0].copy_((x @ torch.tensor([0.6, 0.0, 0.8]) - 0.1)[None, None] / SDF_UNIT)
    assert float(field.eikonal()) < 1e-8 and float(field.curvature()) < 1e-3
    with torch.no_grad():
        field.sdf_levels[0].copy_((x.norm(dim=-1) - 0.5)[None, None] / SDF_UNIT)
    expected = float((2 / x[1:-1, 1:-1, 1:-1].norm(dim=-1)).mean())
    assert abs(float(field.curvature()) / expected - 1) < 0.01 and float(field.eikonal()) < 2e-3
    with torch.no_grad():
        field.sdf_levels[0].mul_(2.0)
    assert abs(float(field.eikonal()) - 1.0) < 0.02


def test_levels_sum_to_the_distance_and_every_level_learns():
    field = SDFVoxelField(resolution=16, levels=(4, 8, 16, 99))
    assert [level.shape[-1] for level in field.sdf_levels] == [4, 8, 16]
    points, _ = _random_points(200, 0.3, 0.7)
    distance = (lambda: -field.softness * torch.logit(field(points)[0] / field.max_density, eps=0))
    with torch.no_grad():
        before = distance()
        field.sdf_levels[2].add_(0.5)           # a constant in any level shifts d by it, in that level's unit
        after = distance()
    shift = 0.5 * SDF_UNIT * 4 / 16             # the finest level moves 4x less per unit than the coarsest
    assert torch.allclose(after - before, torch.full_like(before, shift), atol=1e-3)
    out = render(field, orbit_cameras([0.0, 120.0], 20.0, 3.0, 45.0), 16, 16, num_samples=32, shading="lambertian")
    (out["rgb"].mean() + field.eikonal()).backward()
    assert all(float(level.grad.abs().sum()) > 0 for level in field.sdf_levels)
    assert float(field.albedo_raw.grad.abs().sum()) > 0


def test_renders_a_solid_and_exports_its_zero_level_set():
    field = SDFVoxelField(resolution=32, levels=(16,), radius=0.5)
    with torch.no_grad():
        opacity = render(field, orbit_cameras(0.0, 0.0, 3.0, 45.0), 32, 32, num_samples=96)["opacity"][0, 0]
    assert float(opacity[16, 16]) > 0.999 and float(opacity[0, 0]) < 1e-3   # solid, no haze around it
    zero_set = field_mesh(field, level=field.max_density / 2, resolution=64)     # σ = σ_max/2 where d = 0
    radius = np.linalg.norm(zero_set.vertices, axis=1)
    assert zero_set.is_watertight and zero_set.volume > 0
    assert abs(radius.mean() - 0.5) < 0.015 and radius.std() < 0.01
    # `mldm sds`'s level mesh matches the rendered silhouette: s = 0.03 leaves a halo that grazing rays see
    # as opaque, so it is the same sphere, a little larger
    mesh, level = cut_mesh(field, DistillSettings(), resolution=64, device="cpu", method="level")
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight and radius.std() < 0.01 and 0.5 < radius.mean() < 0.7 and level < field.max_density / 2


def test_the_cli_builds_it_from_the_config():
    cfg = OmegaConf.create({"field": "sdf", "field_resolution": 12, "density_activation": "softplus",
                            "field_bound": None, "field_smoothing": 0.1})
    spec = field_spec(cfg)
    assert spec["kind"] == "sdf" and spec["args"]["resolution"] == 12 and "density_activation" not in spec["args"]
    field = build_field(spec)
    assert isinstance(field, SDFVoxelField) and field.resolution == 12
    assert field.bound == 1.25 and field.smoothing == 0.1                   # null bound: the field's own
    cfg.field_bound = 2.0
    assert build_field(field_spec(cfg)).bound == 2.0


@pytest.mark.parametrize("bad", [{"resolution": 2}, {"softness": 0.0}, {"smoothing": -1.0}])
def test_bad_arguments_are_named(bad):
    with pytest.raises(ValueError, match="resolution|softness|smoothing"):
        SDFVoxelField(**bad)
