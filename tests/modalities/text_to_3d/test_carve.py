"""Meshing what the renders show (the soft visual hull), and its pieces: projection inverts camera_rays; the exp
density activation."""
import math

import numpy as np
import pytest
import torch

from modalities.text_to_3d.cameras import camera_rays, orbit_cameras, project
from modalities.text_to_3d.carve import carving_cameras, hull_occupancy
from modalities.text_to_3d.export import hull_mesh
from modalities.text_to_3d.fields import MLPField, TruncatedExp, VoxelField
from modalities.text_to_3d.render import render


class Ball(torch.nn.Module):
    """A ball of radius ``radius`` holding density ``density`` (a 0.01-thick edge), one albedo."""

    bound = 1.0

    def __init__(self, radius: float, density: float):
        super().__init__()
        self.radius, self.density = radius, density

    def forward(self, points):
        density = self.density * torch.sigmoid((self.radius - points.norm(dim=-1)) / 0.01)
        return density, torch.tensor([0.1, 0.2, 0.9]).expand(*points.shape[:-1], 3)


class Torus(torch.nn.Module):
    """A solid torus about z: major radius 0.6, minor 0.25."""

    bound = 1.0

    def forward(self, points):
        ring = torch.stack([points[..., :2].norm(dim=-1) - 0.6, points[..., 2]], -1).norm(dim=-1)
        return 200 * torch.sigmoid((0.25 - ring) / 0.01), torch.full((*points.shape[:-1], 3), 0.5)


def _seen_radius(field, pixels: int = 96) -> float:
    """The radius of the ball the renders show: from the area of {opacity >= ½} seen from distance 3 with a 45°
    field of view (a ball at distance d subtending half-angle a has radius d·sin a)."""
    opacity = render(field, orbit_cameras([0.0], [0.0], 3.0, 45.0), pixels, pixels, num_samples=256,
                     shading="albedo")["opacity"]
    pixel_radius = math.sqrt(float((opacity >= 0.5).sum()) / math.pi)
    return 3.0 * math.sin(math.atan(pixel_radius / (pixels / 2) * math.tan(math.radians(22.5))))


def test_project_inverts_camera_rays():
    cameras = orbit_cameras([10.0, 130.0, 250.0], [-10.0, 20.0, 60.0], 3.0, 45.0)
    origins, directions = camera_rays(cameras, 12, 20)
    rows, cols = torch.tensor([0, 5, 11]), torch.tensor([19, 7, 0])
    for n in range(3):
        points = origins[n, rows, cols] + 2.2 * directions[n, rows, cols]
        row, col, distance, inside = project(cameras[n:n + 1], points, 12, 20)
        assert torch.allclose(row[0], rows.float(), atol=1e-4) and torch.allclose(col[0], cols.float(), atol=1e-4)
        assert torch.allclose(distance[0], torch.full((3,), 2.2), atol=1e-5) and inside.all()
    behind = project(cameras[:1], 2 * cameras.eye[:1], 12, 20)[3]     # farther out than the eye: behind it
    assert not behind.any()


def test_hull_of_a_ball_is_a_watertight_sphere_of_the_radius_its_renders_show():
    """The rendered silhouette of a soft-edged ball is a little wider than its 0.6 (tangent rays cross a long
    chord of the soft edge); the hull of finitely many views circumscribes it, by at most 1/cos 15° for 12
    views per ring."""
    ball = Ball(0.6, 200.0)
    mesh = hull_mesh(ball, carving_cameras(3.0, 45.0), resolution=64, pixels=96, num_samples=128)
    radius, seen = np.linalg.norm(mesh.vertices, axis=1), _seen_radius(ball)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert 0.6 < seen < 0.65 and radius.min() > seen - 0.015 and radius.mean() < seen * 1.035
    assert np.abs(mesh.visual.vertex_colors[:, :3] / 255.0 - np.array([0.1, 0.2, 0.9])).max() < 2 / 255


def test_hull_of_a_hazy_ball_is_the_ball_its_renders_show():
    """Density 3 everywhere in r < 0.8: what the renders show as opacity >= ½ (∫σ >= ln 2, a chord of 0.23)
    is a ball of radius about √(0.8² − 0.116²) = 0.79, and so is the hull."""
    haze = Ball(0.8, 3.0)
    mesh = hull_mesh(haze, carving_cameras(3.0, 45.0), resolution=64, pixels=96, num_samples=128)
    radius, seen = np.linalg.norm(mesh.vertices, axis=1), _seen_radius(haze)
    assert seen == pytest.approx(math.sqrt(0.8 ** 2 - (math.log(2) / 3 / 2) ** 2), abs=0.01)
    assert radius.min() > seen - 0.015 and radius.mean() < seen * 1.035


def test_hull_keeps_the_hole_of_a_torus():
    mesh = hull_mesh(Torus(), carving_cameras(3.0, 45.0), resolution=64, pixels=96, num_samples=128)
    assert mesh.is_watertight and mesh.euler_number == 0          # genus 1: the views from above see the hole


def test_an_empty_field_has_no_hull():
    occupancy = hull_occupancy(Ball(0.6, 0.0), carving_cameras(3.0, 45.0), 16, pixels=16, num_samples=16)
    assert occupancy.max() == 0.0
    with pytest.raises(ValueError, match="no point is seen at opacity >= 0.5"):
        hull_mesh(Ball(0.6, 0.0), carving_cameras(3.0, 45.0), resolution=16, pixels=16, num_samples=16)


def test_truncated_exp_is_exp_with_a_capped_gradient():
    x = torch.tensor([-3.0, 0.0, 2.0, 20.0], requires_grad=True)
    y = TruncatedExp.apply(x)
    y.sum().backward()
    assert torch.allclose(y, x.detach().exp())
    assert torch.allclose(x.grad, torch.tensor([-3.0, 0.0, 2.0, 15.0]).exp())


@pytest.mark.parametrize("field", [VoxelField(resolution=16, density_activation="exp"),
                                   MLPField(density_activation="exp")])
def test_exp_fields_render_with_gradients_through_the_normals(field):
    out = render(field, orbit_cameras([0.0], [20.0], 3.0, 45.0), 8, 8, num_samples=16, shading="lambertian",
                 generator=torch.Generator().manual_seed(0))
    out["rgb"].sum().backward()
    grads = [p.grad for p in field.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_exp_voxel_values_round_trip_and_unknown_activation():
    density = torch.rand(6, 6, 6) * 50
    field = VoxelField.from_values(density, torch.tensor([0.5, 0.5, 0.5]), density_activation="exp")
    grid = torch.linspace(-1, 1, 6)
    points = torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    assert torch.allclose(field(points)[0], density.reshape(-1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="density_activation must be one of"):
        VoxelField(resolution=4, density_activation="relu")


class BallWithAntenna(torch.nn.Module):
    """A dense ball of radius 0.5 and a faint thin rod up the z axis to 0.9 (radius 0.06, density 5): the rod's
    opacity across it is about 1 − exp(−0.6) < ½, so renders barely show it, while its level set {σ ≥ 2} holds it."""

    bound = 1.0

    def forward(self, points):
        ball = Ball(0.5, 200.0)(points)[0]
        rod = 5 * torch.sigmoid((0.06 - points[..., :2].norm(dim=-1)) / 0.01) * torch.sigmoid((0.9 - points[..., 2]) / 0.01)
        return ball + rod, torch.tensor([0.1, 0.2, 0.9]).expand(*points.shape[:-1], 3)


def test_level_hull_keeps_what_the_level_set_holds_and_drops_its_inside():
    cameras = carving_cameras(3.0, 45.0)
    soft = hull_mesh(BallWithAntenna(), cameras, resolution=64, pixels=96, num_samples=128)
    level = hull_mesh(BallWithAntenna(), cameras, resolution=64, pixels=96, num_samples=128, level=2.0)
    assert soft.vertices[:, 2].max() < 0.6 and level.vertices[:, 2].max() > 0.85     # the thin rod survives
    shell = hull_mesh(HollowBall(), cameras, resolution=64, pixels=96, num_samples=128, level=25.0)
    assert shell.is_watertight and len(shell.split(only_watertight=False)) == 1
    assert np.linalg.norm(shell.vertices, axis=1).min() > 0.58                      # no inner wall at 0.4
    with pytest.raises(ValueError, match="at opacity >= 0.5 or density >= 300"):
        hull_mesh(Ball(0.6, 0.0), cameras, resolution=16, pixels=16, num_samples=16, level=300.0)


class HollowBall(torch.nn.Module):
    """Density 200 for 0.4 < |x| < 0.6, none inside: a shell."""

    bound = 1.0

    def forward(self, points):
        return Ball(0.6, 200.0)(points)[0] - Ball(0.4, 200.0)(points)[0], torch.full((*points.shape[:-1], 3), 0.5)
