"""Signed distance to meshes: agreement with trimesh, winding numbers, open meshes, a sphere."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from modalities.shape.mesh_sdf import (EDGE_AB, EDGE_BC, EDGE_CA, FACE, VERTEX_A, VERTEX_B, VERTEX_C,
                                       closest_points, signed_distance, unsigned_distance, winding_number)

MESHES = {
    "icosphere": lambda: trimesh.creation.icosphere(subdivisions=3),
    "box": lambda: trimesh.creation.box(extents=(0.6, 0.8, 1.0)),
    "torus": lambda: trimesh.creation.torus(0.7, 0.25),
    "cylinder": lambda: trimesh.creation.cylinder(radius=0.4, height=1.1),   # long thin triangles
    "cone": lambda: trimesh.creation.cone(radius=0.5, height=0.9),           # a 32-face apex fan
}


def query_points(mesh: trimesh.Trimesh, seed: int = 0, near: int = 600, uniform: int = 400) -> np.ndarray:
    """Near-surface points (two noise scales, some exactly on the surface) plus uniform ones."""
    rng = np.random.default_rng(seed)
    surface, _ = trimesh.sample.sample_surface(mesh, near, seed=seed)
    sigma = np.repeat([0.0, 0.01, 0.1], [near // 6, near // 2, near - near // 6 - near // 2])
    return np.concatenate([surface + rng.normal(size=surface.shape) * sigma[:, None],
                           rng.uniform(-1.1, 1.1, (uniform, 3))])


def box_sdf(points: np.ndarray, half: np.ndarray) -> np.ndarray:
    q = np.abs(points) - half
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)


def open_box(remove_normals: list) -> trimesh.Trimesh:
    """A unit cube without the faces whose outward normals are listed (no repair)."""
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    drop = np.zeros(len(box.faces), bool)
    for normal in remove_normals:
        drop |= np.all(np.isclose(box.face_normals, normal), axis=1)
    return trimesh.Trimesh(box.vertices, box.faces[~drop], process=False)


@pytest.mark.parametrize("name", sorted(MESHES))
@pytest.mark.parametrize("sign", ["auto", "pseudonormal", "winding"])
def test_matches_trimesh_signed_distance(name, sign):
    mesh = MESHES[name]()
    points = query_points(mesh)
    ours = signed_distance(mesh, points, sign=sign)
    reference = -trimesh.proximity.signed_distance(mesh, points)   # trimesh: positive inside
    assert ours.dtype == np.float32 and ours.shape == (len(points),)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def brute_force_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Closest point on every face (trimesh's per-triangle routine), minimum over faces. Exact,
    unlike trimesh.proximity.closest_point, which was seen to miss the best face by ~4e-7."""
    faces = len(mesh.faces)
    closest = trimesh.triangles.closest_point(np.tile(mesh.triangles, (len(points), 1, 1)),
                                              np.repeat(points, faces, axis=0))
    return np.linalg.norm(closest - np.repeat(points, faces, axis=0), axis=1).reshape(-1, faces).min(axis=1)


@pytest.mark.parametrize("name", ["cylinder", "torus"])
def test_unsigned_distance_is_exact(name):
    mesh = MESHES[name]()
    points = query_points(mesh, seed=1, near=150, uniform=100)
    np.testing.assert_allclose(unsigned_distance(mesh, points), brute_force_distance(mesh, points),
                               atol=1e-12, rtol=0)


def test_triangle_soup_of_mixed_sizes():
    """Pruning must stay exact with triangles of very different sizes and no connectivity."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(-0.8, 0.8, (60, 1, 3))
    scales = np.exp(rng.uniform(np.log(0.01), np.log(1.0), (60, 1, 1)))
    soup = trimesh.Trimesh((centres + scales * rng.normal(size=(60, 3, 3))).reshape(-1, 3),
                           np.arange(180).reshape(60, 3), process=False)
    points = rng.uniform(-1.2, 1.2, (500, 3))
    np.testing.assert_allclose(unsigned_distance(soup, points, chunk=64), brute_force_distance(soup, points),
                               atol=1e-12, rtol=0)


def test_closest_feature_codes_on_a_triangle():
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    points = np.array([[0.2, 0.2, 0.5], [-1, -1, 0], [2, -0.1, 0], [-0.1, 2, 1], [0.5, -1, 0],
                       [1, 1, 0], [-1, 0.5, 0]])
    dist, closest, face, feature = closest_points(tri, points)
    assert feature.tolist() == [FACE, VERTEX_A, VERTEX_B, VERTEX_C, EDGE_AB, EDGE_BC, EDGE_CA]
    np.testing.assert_allclose(closest[:4], [[0.2, 0.2, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]], atol=1e-12)
    np.testing.assert_allclose(dist, np.linalg.norm(points - closest, axis=1), atol=1e-12)
    assert face.tolist() == [0] * 7


@pytest.mark.parametrize("name", ["icosphere", "torus", "cone"])
def test_winding_number_is_one_inside_zero_outside(name):
    mesh = MESHES[name]()
    points = query_points(mesh, seed=2)
    inside = mesh.contains(points)
    far = trimesh.proximity.closest_point(mesh, points)[1] > 1e-3
    w = winding_number(mesh, points)
    np.testing.assert_allclose(w[far & inside], 1.0, atol=1e-6)
    np.testing.assert_allclose(w[far & ~inside], 0.0, atol=1e-6)


@pytest.mark.parametrize("removed", [[(-1, 0, 0)], [(-1, 0, 0), (0, -1, 0)]], ids=["one_face", "two_faces"])
def test_open_box_sign_well_inside_and_outside(removed):
    mesh = open_box(removed)
    assert not mesh.is_watertight
    rng = np.random.default_rng(4)
    points = np.concatenate([rng.uniform(-1 / 6, 1 / 6, (300, 3)), rng.uniform(-1.1, 1.1, (3000, 3))])
    reference = box_sdf(points, np.full(3, 0.5))
    ours = signed_distance(mesh, points)          # auto: the winding-number sign
    # With two adjacent faces open, w stays > 0.5 only within the inner third of the box.
    deep_inside, well_outside = reference < -1 / 3, reference > 0.25
    assert deep_inside.sum() > 250 and well_outside.sum() > 1000
    assert (ours[deep_inside] < 0).all()
    assert (ours[well_outside] > 0).all()
    w = winding_number(mesh, points)
    assert w[deep_inside].min() > 0.5 and np.abs(w[well_outside]).max() < 0.5


def test_inside_out_mesh_keeps_its_sign():
    mesh = MESHES["torus"]()
    points = query_points(mesh, seed=5)
    expected = signed_distance(mesh, points)
    flipped = mesh.copy()
    flipped.invert()
    for sign in ("pseudonormal", "winding"):
        np.testing.assert_allclose(signed_distance(flipped, points, sign=sign), expected, atol=1e-6)


def test_sphere_sdf_is_radius_minus_one():
    mesh = trimesh.creation.icosphere(subdivisions=3)
    # The faces lie inside the unit sphere by at most 1 - (smallest face-plane offset).
    offsets = np.abs((mesh.face_normals * mesh.triangles[:, 0]).sum(axis=1))
    error = 1 - offsets.min()
    assert 0 < error < 0.01
    points = query_points(mesh, seed=6)
    sdf = signed_distance(mesh, points)
    np.testing.assert_array_less(np.abs(sdf - (np.linalg.norm(points, axis=1) - 1)), error + 1e-6)


def test_tensor_input_and_chunking_agree():
    mesh = MESHES["cone"]()
    points = query_points(mesh, seed=7, near=120, uniform=80)
    expected = signed_distance(mesh, points)
    np.testing.assert_array_equal(signed_distance(mesh, torch.tensor(points, dtype=torch.float32), chunk=13),
                                  signed_distance(mesh, points.astype(np.float32)))
    np.testing.assert_allclose(signed_distance(mesh, points, chunk=7, sign="winding"), expected, atol=1e-7)


def test_bad_inputs():
    mesh = MESHES["box"]()
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        signed_distance(mesh, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="sign"):
        signed_distance(mesh, np.zeros((4, 3)), sign="rays")
    with pytest.raises(ValueError, match="no faces"):
        signed_distance(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), int)), np.zeros((4, 3)))
    assert signed_distance(mesh, np.zeros((0, 3))).shape == (0,)
