"""Text-to-3D export: the silhouette-matched iso-level, coloured meshes, field files, turntables, loss plots."""
import json
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from safetensors.torch import save_file

from modalities.shape.mesh import grid_points
from modalities.text_to_3d.export import (
    choose_level,
    field_mesh,
    load_field,
    loss_plot,
    save_field,
    save_mesh,
    turntable,
)
from modalities.video.files import read_video
from shared.errors import DataError

ALBEDO = (0.8, 0.3, 0.1)


class SoftSphere(torch.nn.Module):
    """A soft ball: density 50·sigmoid((r0 − |x|) / 0.02) (25 on the sphere |x| = r0), constant albedo."""

    bound = 1.0

    def __init__(self, radius: float = 0.6):
        super().__init__()
        self.radius = radius
        self.register_buffer("albedo", torch.tensor(ALBEDO))

    def forward(self, points):
        density = 50 * torch.sigmoid((self.radius - points.norm(dim=-1)) / 0.02)
        return density, self.albedo.expand(len(points), 3)


class CoreAndBody(torch.nn.Module):
    """A dense core (r < 0.3, density 100) in a thick, thin body (r < 0.7, density 2): the body is opaque
    in the renders, yet most of the positive density mass sits in the core."""

    bound = 1.0

    def forward(self, points):
        r = points.norm(dim=-1)
        density = 100 * torch.sigmoid((0.3 - r) / 0.02) + 2 * torch.sigmoid((0.7 - r) / 0.02)
        return density, torch.full((len(points), 3), 0.5)


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def _orthographic_along_z(field, resolution=64):
    """(grid densities, ray max [1, R, R], opacity [1, R, R]) for rays along z through the grid's columns."""
    density = field(grid_points(resolution, field.bound))[0].view(resolution, resolution, resolution)
    step = 2 * field.bound / (resolution - 1)
    return density, density.amax(dim=2)[None], 1 - torch.exp(-density.sum(dim=2) * step)[None]


def test_choose_level_reproduces_a_disc_silhouette():
    axis = (torch.arange(128) + 0.5) / 128 * 2 - 1
    distance = torch.hypot(axis[:, None], axis[None, :])[None]          # [1, H, W]
    peak = 50 * torch.sigmoid((0.5 - distance) / 0.05)                   # the density's profile is soft ...
    opacity = torch.sigmoid((0.55 - distance) / 0.01)                    # ... the render opaque out to 0.55
    level = choose_level(peak, opacity)
    assert _iou(peak >= level, opacity >= 0.5) > 0.98
    known = 50 * torch.sigmoid(torch.tensor(-1.0)).item()               # the profile's value at 0.55: 13.4
    assert abs(level - known) / known < 0.1
    assert _iou(peak >= 25.0, opacity >= 0.5) < 0.9                     # half the peak would be wrong


def test_choose_level_beats_the_mean_of_the_field():
    field = CoreAndBody()
    density, peak, opacity = _orthographic_along_z(field)
    level = choose_level(peak, opacity)
    mean_level = density[density > 1e-5].mean().item()                   # threestudio's "auto" threshold
    rendered = opacity >= 0.5
    assert _iou(peak >= level, rendered) > 0.95
    assert _iou(peak >= mean_level, rendered) < 0.5                      # it meshes only the core
    radius = np.linalg.norm(field_mesh(field, level, resolution=48).vertices, axis=1).mean()
    assert 0.6 < radius < 0.75                                           # the body, as rendered


def test_choose_level_errors():
    with pytest.raises(ValueError, match="shape"):
        choose_level(torch.ones(1, 4, 4), torch.ones(1, 4, 5))
    with pytest.raises(ValueError, match="empty"):
        choose_level(torch.rand(2, 4, 4), torch.full((2, 4, 4), 0.1))
    with pytest.raises(ValueError, match="empty"):
        choose_level(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))


def test_field_mesh_of_a_soft_sphere():
    mesh = field_mesh(SoftSphere(), level=25.0, resolution=96)
    assert mesh.is_watertight
    radius = np.linalg.norm(mesh.vertices, axis=1).mean()
    assert abs(radius - 0.6) / 0.6 < 0.02
    assert mesh.volume > 0                                              # outward normals
    colours = np.asarray(mesh.visual.vertex_colors)
    assert colours.dtype == np.uint8 and colours.shape == (len(mesh.vertices), 4)
    assert np.abs(colours[:, :3] / 255.0 - np.array(ALBEDO)).max() <= 1 / 255 and (colours[:, 3] == 255).all()
    with pytest.raises(ValueError, match="level 60"):
        field_mesh(SoftSphere(), level=60.0, resolution=32)
    with pytest.raises(ValueError, match="positive"):
        field_mesh(SoftSphere(), level=0.0, resolution=32)


def test_save_mesh_writes_coloured_ply_obj_glb(tmp_path):
    mesh = field_mesh(SoftSphere(), level=25.0, resolution=40)
    paths = save_mesh(mesh, tmp_path / "out" / "mesh")
    assert [p.name for p in paths] == ["mesh.ply", "mesh.obj", "mesh.glb"] and all(p.is_file() for p in paths)
    assert b"binary_little_endian" in paths[0].read_bytes()[:64]
    expected = np.asarray(mesh.visual.vertex_colors)
    for path in paths[:2]:
        back = trimesh.load(path)
        assert isinstance(back, trimesh.Trimesh) and len(back.vertices) == len(mesh.vertices)
        assert np.array_equal(np.asarray(back.visual.vertex_colors)[:, :3], expected[:, :3])
    scene = trimesh.load(paths[2])
    assert isinstance(scene, trimesh.Scene)
    (geometry,) = scene.geometry.values()
    assert len(geometry.vertices) == len(mesh.vertices)
    assert np.array_equal(np.asarray(geometry.visual.vertex_colors), expected)
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_field_round_trip_and_damaged_files(tmp_path):
    state = {"grid": torch.randn(4, 5, 6), "scale": torch.tensor([0.5], dtype=torch.float16),
             "steps": torch.arange(3)}
    meta = {"prompt": "a red apple", "bound": 1.0, "level": 13.4, "views": [0, 90]}
    path = tmp_path / "field.safetensors"
    save_field(path, state, meta)
    tensors, back = load_field(path)
    assert back == meta and tensors.keys() == state.keys()
    assert all(tensors[k].dtype == v.dtype and torch.equal(tensors[k], v) for k, v in state.items())

    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="truncated") as error:
        load_field(tmp_path / "cut.safetensors")
    assert str(tmp_path / "cut.safetensors") in str(error.value)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(DataError, match="junk.safetensors"):
        load_field(tmp_path / "junk.safetensors")
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(DataError, match="bare.safetensors: no 'mldm' metadata"):
        load_field(tmp_path / "bare.safetensors")
    save_file(state, str(tmp_path / "list.safetensors"), metadata={"mldm": json.dumps([1])})
    with pytest.raises(DataError, match="not an object"):
        load_field(tmp_path / "list.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_field(tmp_path / "missing.safetensors")


def test_turntable_writes_gif_and_mp4(tmp_path):
    azimuths = []

    def render_rgb(cameras):                       # a 32×32 image whose colour encodes the azimuth
        assert len(cameras) == 1 and float(cameras.elevation[0]) == 15.0
        azimuths.append(float(cameras.azimuth[0]))
        image = np.zeros((1, 32, 32, 3), np.uint8)
        image[:, 8:24, 8:24] = (int(azimuths[-1] / 360 * 255), 200, 40)
        return image

    gif, mp4 = turntable(render_rgb, tmp_path / "turntable", frames=6)
    assert azimuths == pytest.approx([0, 60, 120, 180, 240, 300])
    with Image.open(gif) as image:
        assert image.n_frames == 6 and image.size == (128, 128)
    video = read_video(mp4)
    assert video.shape == (6, 128, 128, 3)
    assert abs(int(video[3, 64, 64, 1]) - 200) < 8 and video[3, 4, 4].max() < 8   # upscaled, not blurred away
    with pytest.raises(ValueError, match="uint8"):
        turntable(lambda cameras: np.zeros((1, 8, 8, 3)), tmp_path / "bad", frames=2)


def test_loss_plot_writes_a_png(tmp_path):
    values = 1 / np.arange(1, 201) + np.random.default_rng(0).normal(0, 0.05, 200)
    loss_plot(values, tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as image:
        image.verify()
    with Image.open(tmp_path / "loss.png") as image:
        assert image.format == "PNG" and np.asarray(image.convert("L")).min() < 200
    with pytest.raises(ValueError, match="non-empty"):
        loss_plot([], tmp_path / "empty.png")


def test_rendered_sphere_exports_a_watertight_sphere_of_its_rendered_radius():
    """End to end with the volume renderer: a voxel field holding a sphere, the level chosen from its renders,
    and the mesh has the radius the renders show."""
    from modalities.text_to_3d.cameras import orbit_cameras
    from modalities.text_to_3d.fields import VoxelField
    from modalities.text_to_3d.render import render

    sphere = SoftSphere()
    density, albedo = sphere(grid_points(48, 1.0))
    field = VoxelField.from_values(density.view(48, 48, 48), albedo.T.reshape(3, 48, 48, 48))
    cameras = orbit_cameras([0.0, 90.0, 180.0, 270.0], [0.0, 30.0, -10.0, 45.0], 3.0, 45.0)
    with torch.no_grad():
        views = render(field, cameras, 48, 48, num_samples=128, shading="albedo")
    level = choose_level(views["max_density"], views["opacity"][:, 0])
    mesh = field_mesh(field, level, resolution=64)
    assert mesh.is_watertight
    # the radius the renders show (opacity >= 1/2 where ∫σ >= ln 2: outside the soft ball's 25-level at
    # 0.6), from the silhouette's area in pixels, as a sphere at distance 3 seen with a 45° field of view
    pixel_radius = math.sqrt(float((views["opacity"][0, 0] >= 0.5).sum()) / math.pi)
    seen = 3.0 * math.sin(math.atan(pixel_radius / 24 * math.tan(math.radians(22.5))))
    radius = float(np.linalg.norm(mesh.vertices, axis=1).mean())
    assert seen > 0.63 and radius == pytest.approx(seen, abs=0.015)
    assert np.abs(mesh.visual.vertex_colors[:, :3] / 255.0 - np.array(ALBEDO)).max() < 2 / 255


class SphereWithSpecks(torch.nn.Module):
    """The soft sphere plus two dense specks of haze, far from it."""

    bound = 1.0

    def forward(self, points):
        density = SoftSphere()(points)[0]
        for centre in ((0.8, 0.8, 0.8), (-0.8, 0.7, -0.75)):
            density = density + 50 * torch.sigmoid((0.06 - (points - torch.tensor(centre)).norm(dim=-1)) / 0.01)
        return density, torch.tensor(ALBEDO).expand(len(points), 3)


def test_field_mesh_drops_specks_of_haze():
    kept = field_mesh(SphereWithSpecks(), level=25.0, resolution=64)
    everything = field_mesh(SphereWithSpecks(), level=25.0, resolution=64, min_component_fraction=0.0)
    assert len(everything.split(only_watertight=False)) == 3 and len(kept.split(only_watertight=False)) == 1
    assert np.linalg.norm(kept.vertices, axis=1).max() < 0.65 and len(kept.visual.vertex_colors) == len(kept.vertices)


class HollowBall(torch.nn.Module):
    """A soft ball of radius 0.6 with a hollow of radius 0.4 inside: a shell, as SDS often leaves a solid."""

    bound = 1.0

    def forward(self, points):
        outer, hollow = SoftSphere(0.6)(points)[0], SoftSphere(0.4)(points)[0]
        return outer - hollow, torch.tensor(ALBEDO).expand(len(points), 3)


def test_field_mesh_is_the_outer_surface_of_a_shell():
    mesh = field_mesh(HollowBall(), level=25.0, resolution=64)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert radii.min() > 0.55 and abs(radii.mean() - 0.6) < 0.01           # no inner wall at r = 0.4
    assert abs(mesh.volume - 4 / 3 * math.pi * 0.6 ** 3) < 0.03 * mesh.volume
