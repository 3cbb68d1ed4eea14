"""3D shape data: the primitives set, surface / SDF sampling, caching, and the mesh-folder loader."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import trimesh

from modalities.shape.data import (PRIMITIVE_KINDS, MeshFolder, Primitives, load_mesh, normalize_mesh,
                                   primitive_mesh, sample_sdf, sample_surface)
from modalities.shape.mesh_sdf import signed_distance, unsigned_distance
from shared.errors import DataError
from shared.io.skipped_inputs import skipped_inputs_log

SMALL = dict(num_points=64, sdf_near=64, sdf_uniform=32)


def test_items_are_deterministic_per_seed_split_index():
    ds = Primitives(num_samples=6, cache_dir=None, **SMALL)
    again = Primitives(num_samples=6, cache_dir=None, **SMALL)
    for i in range(6):
        a, b = ds[i], again[i]
        assert torch.equal(a["points"], b["points"]) and a["label"] == b["label"] and a["kind"] == b["kind"]
        assert a["points"].dtype == torch.float32 and a["points"].shape == (64, 3)
        assert PRIMITIVE_KINDS[a["label"]] == a["kind"]
    assert torch.equal(ds[-1]["points"], ds[5]["points"])
    other_split = Primitives(num_samples=6, split="val", cache_dir=None, **SMALL)
    other_seed = Primitives(num_samples=6, seed=1, cache_dir=None, **SMALL)
    assert not torch.equal(ds[0]["points"], other_split[0]["points"])
    assert not torch.equal(ds[0]["points"], other_seed[0]["points"])
    # Points do not depend on whether SDF samples are drawn after them.
    with_sdf = Primitives(num_samples=6, with_sdf=True, cache_dir=None, **SMALL)
    assert torch.equal(with_sdf[2]["points"], ds[2]["points"])
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(ValueError, match="split"):
        Primitives(split="dev")


def test_kind_is_the_first_draw_of_the_item_stream():
    """Documented contract: item i of split s uses default_rng([seed, split_id, i]), kind first."""
    for split, split_id in (("train", 0), ("val", 1), ("test", 2)):
        ds = Primitives(num_samples=8, num_points=4, seed=3, split=split, cache_dir=None)
        labels = [ds[i]["label"] for i in range(8)]
        assert labels == [int(np.random.default_rng([3, split_id, i]).integers(5)) for i in range(8)]
    counts = np.bincount([np.random.default_rng([0, 0, i]).integers(5) for i in range(2000)], minlength=5)
    assert counts.min() > 330   # uniform over the five kinds: 400 expected each
    assert Primitives.label_names == PRIMITIVE_KINDS


@pytest.mark.parametrize("kind", PRIMITIVE_KINDS)
def test_normalisation_and_surface_points(kind):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        mesh = primitive_mesh(kind, rng)
        assert mesh.is_watertight
        np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1).max(), 1.0, atol=1e-6)
        np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-6)
        points = sample_surface(mesh, 256, rng)
        assert points.dtype == np.float32 and points.shape == (256, 3)
        assert unsigned_distance(mesh, points).max() < 1e-5   # float32 rounding of points on the surface


def test_normalize_mesh():
    mesh = trimesh.creation.box(extents=(2.0, 4.0, 6.0)).apply_translation([5.0, -3.0, 1.0])
    normalised = normalize_mesh(mesh)
    np.testing.assert_allclose(normalised.bounds.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(normalised.vertices, axis=1).max(), 1.0, atol=1e-12)
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), [5.0, -3.0, 1.0])   # the input is left alone
    point = trimesh.Trimesh(np.ones((3, 3)), [[0, 1, 2]], process=False)
    with pytest.raises(ValueError, match="zero extent"):
        normalize_mesh(point)


def test_primitive_parameters_follow_the_spec():
    """Replay the draws: the normalised mesh must be the raw shape scaled by 1/farthest vertex."""
    for seed in range(5):
        draw = np.random.default_rng(seed)
        extents = draw.uniform(0.5, 1.0, 3)
        box = primitive_mesh("box", np.random.default_rng(seed))
        np.testing.assert_allclose(box.extents, extents / np.linalg.norm(extents / 2), atol=1e-9)
        for kind in ("cylinder", "cone"):
            draw = np.random.default_rng(seed)
            radius, height = draw.uniform(0.3, 0.6), draw.uniform(0.6, 1.2)
            mesh = primitive_mesh(kind, np.random.default_rng(seed))
            scale = 1 / np.hypot(radius, height / 2)      # the rim is the farthest vertex (bbox-centred)
            np.testing.assert_allclose(mesh.extents, [2 * radius * scale, 2 * radius * scale, height * scale],
                                       atol=1e-9)
        minor = np.random.default_rng(seed).uniform(0.15, 0.35)
        torus = primitive_mesh("torus", np.random.default_rng(seed))
        np.testing.assert_allclose(torus.extents[2] / torus.extents[0], minor / (0.7 + minor), atol=1e-3)
    sphere = primitive_mesh("sphere", np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(sphere.vertices, axis=1), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="unknown primitive"):
        primitive_mesh("pyramid", np.random.default_rng(0))


def test_sdf_samples_of_a_sphere():
    rng = np.random.default_rng(0)
    mesh = primitive_mesh("sphere", rng)
    points, sdf = sample_sdf(mesh, rng, near=400, uniform=200)
    assert points.dtype == np.float32 and sdf.dtype == np.float32
    assert points.shape == (600, 3) and sdf.shape == (600,)
    radius = np.linalg.norm(points, axis=1)
    # The icosphere's faces lie inside the unit sphere by at most 1 - (smallest face-plane offset).
    error = 1 - np.abs((mesh.face_normals * mesh.triangles[:, 0]).sum(axis=1)).min()
    np.testing.assert_array_less(np.abs(sdf - (radius - 1)), error + 1e-6)
    assert (sdf[radius < 0.99] < 0).all() and (sdf[radius > 1.0] > 0).all()
    assert np.abs(points[400:]).max() <= 1.1
    # Near part: first half sigma 0.01, second half 0.05 (offset norms ~ sigma * sqrt(3) on average).
    assert np.abs(sdf[:200]).mean() < 0.015 < np.abs(sdf[200:400]).mean() < 0.06


def test_materialize_and_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = Primitives(num_samples=5, with_sdf=True, cache_dir="cache", **SMALL)   # relative: to the cwd
    out = ds.materialize()
    assert set(out) == {"points", "labels", "sdf_points", "sdf"}
    assert out["points"].shape == (5, 64, 3) and out["points"].dtype == torch.float32
    assert out["labels"].dtype == torch.long and out["sdf"].shape == (5, 96)
    assert out["sdf_points"].shape == (5, 96, 3)
    files = list((tmp_path / "cache").glob("primitives-*.npz"))
    assert files == [ds.cache_path.resolve()] and not list((tmp_path / "cache").glob("*.tmp"))
    for i in range(5):
        item = ds[i]
        assert torch.equal(out["points"][i], item["points"]) and torch.equal(out["sdf"][i], item["sdf"])
        assert out["labels"][i] == item["label"]
    # A second materialize reads the file: overwrite it with marked content to see that it is used.
    np.savez(files[0], **{k: (v.numpy() + 1 if k == "points" else v.numpy()) for k, v in out.items()})
    assert torch.equal(ds.materialize()["points"], out["points"] + 1)
    # Different parameters -> a different file; no SDF -> only points and labels.
    plain = Primitives(num_samples=5, cache_dir="cache", **SMALL).materialize()
    assert set(plain) == {"points", "labels"} and torch.equal(plain["points"], out["points"])
    assert len(list((tmp_path / "cache").glob("primitives-*.npz"))) == 2
    # A corrupt cache file is regenerated with a warning.
    files[0].write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = ds.materialize()
    for key in out:
        assert torch.equal(again[key], out[key])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(ds.materialize()["sdf"], out["sdf"])   # the rewritten file loads cleanly


def write_mesh_folder(root):
    """boxes/ and spheres/ class folders with .obj, .off and .ply exports (one nested)."""
    meshes = {"boxes/a.obj": trimesh.creation.box(extents=(1.0, 2.0, 3.0)),
              "boxes/nested/b.off": trimesh.creation.box(extents=(2.0, 2.0, 2.0)),
              "spheres/c.ply": trimesh.creation.icosphere(subdivisions=2, radius=5.0),
              "spheres/d.obj": trimesh.creation.icosphere(subdivisions=1, radius=0.3)}
    for name, mesh in meshes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        mesh.apply_translation([3.0, -1.0, 2.0])      # the loader must re-centre
        mesh.export(root / name)
    (root / "spheres" / "notes.txt").write_text("not a mesh")
    return sorted(meshes)


def test_mesh_folder_labels_and_points(tmp_path):
    names = write_mesh_folder(tmp_path / "data")
    ds = MeshFolder(tmp_path / "data", num_points=128, cache_dir=None)
    assert [f.relative_to(tmp_path / "data").as_posix() for f in ds.files] == names
    assert ds.label_names == ("boxes", "spheres") and len(ds) == 4
    assert [ds[i]["label"] for i in range(4)] == [0, 0, 1, 1]
    assert [ds[i]["kind"] for i in range(4)] == ["boxes", "boxes", "spheres", "spheres"]
    assert ds.num_non_watertight == 0 and ds.skipped == []
    for i in range(4):
        mesh, points = ds.mesh(i), ds[i]["points"].numpy()
        np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1).max(), 1.0, atol=1e-6)
        np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-6)
        assert unsigned_distance(mesh, points).max() < 1e-5
    np.testing.assert_allclose(ds.mesh(0).extents, np.array([1.0, 2.0, 3.0]) / np.linalg.norm([0.5, 1, 1.5]),
                               atol=1e-6)


def test_mesh_folder_materialize_with_sdf_and_cache(tmp_path, monkeypatch):
    write_mesh_folder(tmp_path / "data")
    kwargs = dict(with_sdf=True, cache_dir=tmp_path / "cache", **SMALL)
    ds = MeshFolder(tmp_path / "data", **kwargs)
    out = ds.materialize()
    assert out["labels"].tolist() == [0, 0, 1, 1] and out["sdf"].shape == (4, 96)
    box = ds.mesh(1)   # the cube: analytic SDF
    half = box.extents / 2
    q = np.abs(out["sdf_points"][1].numpy()) - half
    expected = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
    np.testing.assert_allclose(out["sdf"][1].numpy(), expected, atol=1e-5)
    # A new instance over the same files reuses the cache (file lists included): no mesh is opened.
    def no_loading(path):
        raise AssertionError(f"{path} was loaded although the cache is valid")
    with monkeypatch.context() as patch:
        patch.setattr("modalities.shape.data.load_mesh", no_loading)
        again = MeshFolder(tmp_path / "data", **kwargs)
        assert again.files == ds.files and again.label_names == ds.label_names
        assert torch.equal(again.materialize()["sdf"], out["sdf"])
    # Touching a file changes the key.
    before = ds.cache_path
    os.utime(ds.files[0], ns=(0, 0))
    assert ds.cache_path == before and MeshFolder(tmp_path / "data", **kwargs).cache_path != before


BAD_FILES = {"garbage.obj": np.random.default_rng(0).bytes(512), "empty.obj": b"",
             "nofaces.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\n",
             "nan.obj": b"v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 2 3 4\nf 1 3 4\n",
             "flat.obj": b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n"}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_mesh_file_raises_naming_it(tmp_path, name):
    trimesh.creation.box().export(tmp_path / "good.obj")
    bad = tmp_path / name
    bad.write_bytes(BAD_FILES[name])
    with pytest.raises(ValueError, match=str(bad)):
        MeshFolder(tmp_path, cache_dir=None)


def test_skip_bad_counts_and_reports(tmp_path, capsys):
    trimesh.creation.box().export(tmp_path / "good.obj")
    for name, data in BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
    ds = MeshFolder(tmp_path, num_points=16, skip_bad=True, cache_dir=None)
    assert f"skipped 5 bad input(s) of {tmp_path}" in capsys.readouterr().err
    assert len(ds) == 1 and ds[0]["label"] == -1 and ds.label_names == ()
    assert sorted(p.name for p, _ in ds.skipped) == sorted(BAD_FILES)
    assert all(reason for _, reason in ds.skipped)


@pytest.mark.parametrize("content, message", [
    (BAD_FILES["nan.obj"], "non-finite vertex coordinates: NaN/inf in 1 of 4 vertices"),
    (b"v 1e300 0 0\nv -1e300 0 0\nv 0 1e300 0\nf 1 2 3\n", "too large"),
    (b"ply\nformat ascii 1.0\nelement vertex x\n", "cannot read mesh"),
    (b"v \r -1 -1\nv 0 1 0\nv 1 0 0\nf 1 2 3\n", "expected 3D vertices"),   # the fuzzer's find: vertices [3, 0]
])
def test_load_mesh_refuses_with_one_data_error(tmp_path, content, message):
    path = tmp_path / ("bad.ply" if content.startswith(b"ply") else "bad.obj")
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        load_mesh(path)
    assert str(error.value).startswith(f"{path}: ") and len(str(error.value).splitlines()) == 1


def test_skipped_meshes_go_to_the_log(tmp_path, capsys):
    trimesh.creation.box().export(tmp_path / "good.obj")
    (tmp_path / "nan.obj").write_bytes(BAD_FILES["nan.obj"])
    with skipped_inputs_log(tmp_path / "logs" / "skipped.txt"):
        ds = MeshFolder(tmp_path, num_points=16, skip_bad=True, cache_dir=None)
    assert len(ds) == 1 and [p.name for p, _ in ds.skipped] == ["nan.obj"]
    assert "skipped 1 bad input(s)" in capsys.readouterr().err
    logged = (tmp_path / "logs" / "skipped.txt").read_text()
    assert logged == f"{tmp_path / 'nan.obj'}\t{ds.skipped[0][1]}\n" and "non-finite" in logged
    (tmp_path / "good.obj").unlink()
    with pytest.raises(DataError, match=rf"{tmp_path}: no readable meshes \(1 skipped\)"):
        MeshFolder(tmp_path, skip_bad=True, cache_dir=None)


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MeshFolder(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no meshes")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        MeshFolder(tmp_path)


@pytest.mark.parametrize("removed, watertight_after_repair", [(1, True), (2, False)],
                         ids=["one_face", "two_faces"])
def test_open_box_loads_with_correct_sdf_sign(tmp_path, removed, watertight_after_repair):
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    normals = [(-1, 0, 0), (0, -1, 0)][:removed]
    drop = np.any([np.all(np.isclose(box.face_normals, n), axis=1) for n in normals], axis=0)
    trimesh.Trimesh(box.vertices, box.faces[~drop]).export(tmp_path / "open.obj")
    ds = MeshFolder(tmp_path, with_sdf=True, cache_dir=None, **SMALL)
    assert ds.num_non_watertight == (0 if watertight_after_repair else 1)
    mesh = ds.mesh(0)
    half = np.linalg.norm(mesh.vertices, axis=1).max() / np.sqrt(3)   # a cube normalised to radius 1
    rng = np.random.default_rng(0)
    inside = rng.uniform(-half / 3, half / 3, (200, 3))   # w > 0.5 there even with 2 faces open
    outside = rng.uniform(-1.1, 1.1, (2000, 3))
    outside = outside[np.abs(outside).max(axis=1) > 1.5 * half]
    assert (signed_distance(mesh, inside) < 0).all() and (signed_distance(mesh, outside) > 0).all()
    item = ds[0]
    points, sdf = item["sdf_points"].numpy(), item["sdf"].numpy()
    deep, far = np.abs(points).max(axis=1) < half / 3, np.abs(points).max(axis=1) > 1.5 * half
    assert (sdf[deep] < 0).all() and (sdf[far] > 0).all() and far.sum() > 10
