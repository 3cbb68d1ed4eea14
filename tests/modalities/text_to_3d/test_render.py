"""Cameras, fields and the volume renderer against closed forms: a sphere's silhouette, colour and normals."""
import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch import nn

from modalities.text_to_3d.cameras import camera_rays, look_at, orbit_cameras, turn, view_suffix
from modalities.text_to_3d.fields import MLPField, VoxelField, gaussian_blur
from modalities.text_to_3d.render import _field_with_normals, render

RADIUS, ALBEDO = 0.6, (0.8, 0.3, 0.1)


class Sphere(nn.Module):
    """A solid sphere: density 200 inside radius 0.6 (a 0.005-thick edge), one albedo."""

    bound = 1.0

    def forward(self, points):
        density = 200.0 * torch.sigmoid((RADIUS - points.norm(dim=-1)) / 0.005)
        return density, torch.tensor(ALBEDO).expand(*points.shape[:-1], 3)


def _cameras():
    return orbit_cameras([0.0, 73.0, 200.0], [0.0, 30.0, -10.0], 3.0, 45.0)


def test_look_at_is_a_rotation_looking_at_the_origin():
    cameras = orbit_cameras(torch.rand(16) * 360, torch.rand(16) * 100 - 50, 2.5, 40.0)
    r = cameras.rotation
    assert torch.allclose(r.transpose(1, 2) @ r, torch.eye(3).expand(16, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(16), atol=1e-5)
    forward = -r[..., 2]
    assert torch.allclose(forward, -cameras.eye / cameras.eye.norm(dim=-1, keepdim=True), atol=1e-5)
    assert (r[..., 2, 0].abs() < 1e-6).all()   # no roll: the right axis stays horizontal
    with pytest.raises(ValueError, match="straight up"):
        look_at(torch.tensor([[0.0, 0.0, 3.0]]))


def test_rays_span_the_field_of_view():
    cameras = orbit_cameras(30.0, 20.0, 3.0, 45.0)
    origins, directions = camera_rays(cameras, 33, 33)
    centre = directions[0, 16, 16]
    assert torch.allclose(centre, -cameras.eye[0] / 3.0, atol=1e-5)
    top = directions[0, 0, 16]
    # the top row's centre is half a pixel inside the frame's edge
    expected = math.atan(math.tan(math.radians(22.5)) * (1 - 1 / 33))
    assert math.acos(float((top * centre).sum())) == pytest.approx(expected, abs=1e-5)
    assert float(top[2]) > float(centre[2])          # row 0 is the top of the image (world z up)
    assert torch.allclose(origins, cameras.eye[:, None, None, :].expand_as(origins))


def test_view_suffixes_follow_dreamfusion():
    assert [view_suffix(a) for a in (0, -45, 44.9, 45, 134.9, 135, 224.9, 225, 314.9, 315, 720)] == [
        ", front view", ", front view", ", front view", ", side view", ", side view", ", back view",
        ", back view", ", side view", ", side view", ", front view", ", front view"]


def test_turn_rotates_by_the_requested_angle():
    generator = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(64, 3, generator=generator), dim=-1)
    angle = torch.rand(64, generator=generator) * 30
    turned = turn(v, angle, torch.randn(64, 3, generator=generator))
    assert torch.allclose(turned.norm(dim=-1), torch.ones(64), atol=1e-5)
    # atan2(|v × u|, v·u): exact for small angles too, where acos of a float32 dot product is not
    between = torch.atan2(torch.linalg.cross(v, turned, dim=-1).norm(dim=-1), (turned * v).sum(-1))
    assert torch.allclose(torch.rad2deg(between), angle, atol=1e-3)


def test_sphere_silhouette_opacity_and_colour():
    cameras = _cameras()
    with torch.no_grad():
        out = render(Sphere(), cameras, 32, 32, shading="albedo")
    origins, directions = camera_rays(cameras, 32, 32)
    miss_distance = torch.linalg.cross(origins, directions, dim=-1).norm(dim=-1)   # ray to origin
    opacity = out["opacity"][:, 0]
    inside, outside = miss_distance < RADIUS - 0.03, miss_distance > RADIUS + 0.06   # the soft edge's tail
    assert inside.sum() > 300 and outside.sum() > 1500
    assert (opacity[inside] > 0.999).all() and (opacity[outside] < 1e-3).all()
    rgb = out["rgb"].permute(0, 2, 3, 1)
    assert torch.allclose(rgb[inside], torch.tensor(ALBEDO).expand_as(rgb[inside]), atol=1e-3)
    # the depth of the silhouette's centre is the distance to the sphere's front, within a sample bin
    assert float(out["depth"][0, 0, 15:17, 15:17].mean()) == pytest.approx(3.0 - RADIUS, abs=0.03)


def test_lambertian_shading_and_background():
    cameras = orbit_cameras(0.0, 0.0, 3.0, 45.0)
    with torch.no_grad():
        lit = render(Sphere(), cameras, 33, 33, shading="lambertian", background=(1.0, 1.0, 1.0))
        grey = render(Sphere(), cameras, 33, 33, shading="textureless")
    # the head-on point faces the light (at the camera): albedo · (0.3 + 0.7)
    assert torch.allclose(lit["rgb"][0, :, 16, 16], torch.tensor(ALBEDO), atol=2e-3)
    assert torch.allclose(lit["rgb"][0, :, 0, 0], torch.ones(3), atol=1e-4)    # white background
    centre = grey["rgb"][0, :, 16, 16]
    assert torch.allclose(centre, torch.ones(3), atol=2e-3)
    edge_row = grey["rgb"][0, 0, 16]   # shading falls off towards the limb: n·l → 0
    lit_pixels = edge_row[grey["opacity"][0, 0, 16] > 0.99]
    assert float(lit_pixels.min()) < 0.6 and float(lit_pixels.max()) > 0.99


def test_normals_point_outward():
    directions = torch.nn.functional.normalize(torch.randn(1, 500, 3), dim=-1)
    points = directions * RADIUS
    _, _, normals = _field_with_normals(Sphere(), points, want_normals=True)
    assert float((normals.detach() * directions).sum(-1).min()) > 0.999


@pytest.mark.parametrize("shading", ["albedo", "lambertian", "textureless"])
def test_gradients_reach_the_voxel_grid(shading):
    field = VoxelField(resolution=16)
    out = render(field, _cameras(), 16, 16, num_samples=32, shading=shading,
                 generator=torch.Generator().manual_seed(0))
    out["rgb"].mean().backward()
    assert torch.isfinite(field.density_raw.grad).all() and field.density_raw.grad.abs().sum() > 0
    if shading != "textureless":
        assert field.albedo_raw.grad.abs().sum() > 0


def test_shading_gradient_reaches_density_through_the_normals():
    """Textureless renders of an opaque blob depend on the density only through n = −∇σ/|∇σ|."""
    field = VoxelField(resolution=16, blob_density=40.0, smoothing=0.0)
    out = render(field, _cameras(), 16, 16, num_samples=32, shading="textureless")
    covered = out["opacity"] > 0.999
    (out["rgb"] * covered).sum().backward()
    assert field.density_raw.grad.abs().sum() > 0


def test_voxel_values_round_trip():
    density = torch.rand(8, 8, 8) * 5 + 0.01
    albedo = torch.rand(3, 8, 8, 8) * 0.9 + 0.05
    field = VoxelField.from_values(density, albedo, bound=1.5)
    axis = torch.linspace(-1.5, 1.5, 8)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    d, a = field(points)
    assert torch.allclose(d, density.reshape(-1), rtol=1e-4, atol=1e-5)
    assert torch.allclose(a, albedo.reshape(3, -1).T, atol=1e-5)
    assert float(VoxelField.from_values(torch.ones(4, 4, 4), torch.full((3,), 0.5)).total_variation().detach()) < 1e-10


def test_renders_are_deterministic_and_stratified_samples_agree():
    field, cameras = MLPField(), _cameras()
    with torch.no_grad():
        a = render(field, cameras, 8, 8)["rgb"]
        b = render(field, cameras, 8, 8)["rgb"]
        c = render(field, cameras, 8, 8, generator=torch.Generator().manual_seed(1))["rgb"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(c).all() and float((a - c).abs().mean()) < 0.05


def test_rays_that_miss_the_box_are_background():
    cameras = orbit_cameras(0.0, 0.0, 3.0, 120.0)   # a wide view: the frame's corners miss [-1, 1]^3
    with torch.no_grad():
        out = render(Sphere(), cameras, 16, 16, background=(0.2, 0.4, 0.6))
    assert float(out["opacity"][0, 0, 0, 0]) == 0.0
    assert torch.allclose(out["rgb"][0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    assert float(out["max_density"][0, 8, 8]) > 150 and float(out["max_density"][0, 0, 0]) == 0.0


def test_gaussian_blur_matches_scipy():
    grid = torch.randn(1, 2, 9, 10, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = [scipy.ndimage.gaussian_filter(channel.numpy(), 1.3, mode="nearest", truncate=3.0) for channel in grid[0]]
    assert np.allclose(gaussian_blur(grid, 1.3)[0].numpy(), np.stack(expected), atol=1e-12)
    assert torch.equal(gaussian_blur(grid, 0.0), grid)
    assert torch.allclose(gaussian_blur(torch.full((1, 1, 6, 6, 6), 2.5), 2.0), torch.tensor(2.5))


def test_a_smoothed_voxel_field_is_the_blur_of_its_parameters():
    """field.smoothing = σ (world units; 1.5 cells here): the density at the grid points is the activation of the
    blurred raw grid, so one parameter moves a Gaussian footprint, never a single cell."""
    field = VoxelField(resolution=12, bound=1.1, blob_density=0.0, smoothing=0.3)
    with torch.no_grad():
        field.density_raw.copy_(torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(1)))
    axis = torch.linspace(-1.1, 1.1, 12)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    blurred = scipy.ndimage.gaussian_filter(field.density_raw.detach()[0, 0].double().numpy(), 1.5, mode="nearest",
                                            truncate=3.0)
    density = field(points)[0]
    assert np.allclose(density.detach().numpy(), np.log1p(np.exp(blurred)).reshape(-1), atol=1e-5)
    density[6 * 144 + 6 * 12 + 6].backward()                       # one grid point's density
    assert int((field.density_raw.grad[0, 0, :, 6, 6].abs() > 1e-6).sum()) >= 7
