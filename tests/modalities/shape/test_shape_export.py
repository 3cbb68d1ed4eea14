"""3D shape sample directories: PLY / OBJ files, index, arrays, preview, reading them back."""
import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from modalities.shape.export import (
    _decimate,
    export_meshes,
    export_point_clouds,
    load_meshes,
    load_shape_samples,
    read_point_cloud,
)
from modalities.shape.completion import complete
from shared.errors import DataError
from shared.io.sample_dir import MANIFEST_FILE


def _clouds(n=5, p=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, p, 3)).astype(np.float32))


def _records(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _assert_png(path):
    with Image.open(path) as image:
        image.verify()                                     # a complete, valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 200                               # something was drawn on the white page


def test_point_cloud_round_trip(tmp_path):
    points = _clouds()
    out = export_point_clouds(tmp_path / "s", points, labels=[0, 2, 1, 2, 0],
                              label_names=["chair", "table", "lamp"], seeds=range(10, 15),
                              extra={"steps": [50] * 5, "cfg": np.full(5, 2.5)})
    names = sorted(p.name for p in out.iterdir())
    assert names == [MANIFEST_FILE] + [f"{i:06d}.ply" for i in range(5)] + ["preview.png", "samples.jsonl", "samples.npz"]
    records = _records(out)
    assert records[1] == {"file": "000001.ply", "label": 2, "prompt": "lamp", "seed": 11,
                          "steps": 50, "cfg": 2.5}
    loaded = load_shape_samples(out)
    assert loaded["points"].dtype == torch.float32 and torch.equal(loaded["points"], points)
    assert loaded["labels"].dtype == torch.int64 and loaded["labels"].tolist() == [0, 2, 1, 2, 0]
    assert loaded["index"] == records and loaded["kind"] == "point_clouds" and loaded["meshes"] is None
    cloud = trimesh.load(out / "000003.ply")
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) == 64
    assert np.array_equal(cloud.vertices.astype(np.float32), points[3].numpy())
    assert b"binary_little_endian" in (out / "000003.ply").read_bytes()[:64]
    _assert_png(out / "preview.png")
    assert not list(out.glob(".*tmp"))


def test_minimal_export_and_rewrite_removes_stale_files(tmp_path):
    export_point_clouds(tmp_path, _clouds(5).numpy())
    out = export_point_clouds(tmp_path, _clouds(3, seed=1))
    assert sorted(p.name for p in out.glob("*.ply")) == [f"{i:06d}.ply" for i in range(3)]
    assert _records(out) == [{"file": f"{i:06d}.ply"} for i in range(3)]
    loaded = load_shape_samples(out)
    assert loaded["labels"] is None and torch.equal(loaded["points"], _clouds(3, seed=1))


def test_invalid_inputs_write_nothing(tmp_path):
    points = _clouds()
    points[2, 7, 1] = float("nan")
    points[4, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="sample 2 has NaN/inf"):
        export_point_clouds(tmp_path / "nan", points)
    with pytest.raises(ValueError, match="expected points"):
        export_point_clouds(tmp_path / "shape", torch.zeros(2, 8, 2))
    with pytest.raises(ValueError, match="4 labels for 5"):
        export_point_clouds(tmp_path / "n", _clouds(), labels=[0] * 4)
    with pytest.raises(ValueError, match="clash"):
        export_point_clouds(tmp_path / "k", _clouds(), extra={"file": list("abcde")})
    with pytest.raises(ValueError, match="JSON"):
        export_point_clouds(tmp_path / "j", _clouds(), extra={"obj": [object()] * 5})
    assert not list(tmp_path.iterdir())


def test_meshes_obj_watertight_and_empty_keeps_index_aligned(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    meshes = [sphere, trimesh.Trimesh(), box, None]
    points = torch.from_numpy(np.stack([sphere.sample(128, seed=0), np.zeros((128, 3)),
                                        box.sample(128, seed=0), np.zeros((128, 3))]).astype(np.float32))
    out = export_meshes(tmp_path, meshes, points, labels=[1, 0, 1, 0], label_names=["void", "shape"],
                        seeds=[7, 8, 9, 10])
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, "000000.obj", "000002.obj", "preview.png",
                                                     "samples.jsonl", "samples.npz"]
    records = _records(out)
    assert records[0] == {"file": "000000.obj", "label": 1, "prompt": "shape", "seed": 7}
    assert records[1] == {"file": None, "label": 0, "prompt": "void", "seed": 8, "empty": True}
    assert records[3]["file"] is None and records[3]["empty"] is True
    loaded = load_shape_samples(out)
    assert loaded["kind"] == "meshes" and torch.equal(loaded["points"], points)
    back = loaded["meshes"]
    assert len(back) == 4 and len(back[1].faces) == 0 and len(back[3].faces) == 0
    assert back[0].is_watertight and len(back[0].faces) == len(sphere.faces)
    assert np.allclose(np.sort(back[0].vertices, axis=0), np.sort(sphere.vertices, axis=0), atol=1e-6)
    assert back[2].is_watertight and np.isclose(back[2].volume, box.volume)
    assert load_shape_samples(out, meshes=False)["meshes"] is None
    _assert_png(out / "preview.png")


def test_meshes_as_ply_and_mesh_errors(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=1)
    points = _clouds(1)
    out = export_meshes(tmp_path / "ply", [sphere], points, mesh_format="ply")
    assert _records(out) == [{"file": "000000.ply"}]
    assert load_meshes(out)[0].is_watertight
    with pytest.raises(ValueError, match="mesh_format"):
        export_meshes(tmp_path / "x", [sphere], points, mesh_format="stl")
    with pytest.raises(ValueError, match="2 meshes for 1"):
        export_meshes(tmp_path / "x", [sphere, sphere], points)
    broken = sphere.copy()
    broken.vertices[3] = np.nan
    with pytest.raises(ValueError, match="mesh 0 has NaN"):
        export_meshes(tmp_path / "x", [broken], points)
    (out / "000000.ply").write_bytes(b"ply\nformat garbage\n")
    with pytest.raises(ValueError, match="000000.ply: unreadable mesh"):
        load_meshes(out)


def test_large_meshes_are_decimated_for_the_preview_only():
    big = trimesh.creation.icosphere(subdivisions=5)                      # 20480 faces
    vertices, faces = _decimate(np.asarray(big.vertices), np.asarray(big.faces), 2000)
    assert 200 < len(faces) <= 2000 and faces.max() < len(vertices)
    assert np.abs(np.linalg.norm(vertices, axis=1) - 1).max() < 0.1       # still the sphere
    small = trimesh.creation.box()
    assert _decimate(small.vertices, small.faces, 2000)[1] is small.faces


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_shape_samples(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="samples.npz: missing; not a complete sample directory"):
        load_shape_samples(tmp_path)
    out = export_point_clouds(tmp_path / "s", _clouds(4), preview_max=1)
    index = out / "samples.jsonl"
    index.write_text("".join(index.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(ValueError, match="samples.jsonl: 3 lines but .*4 samples"):
        load_shape_samples(out)
    index.write_text('{"file": "000000.ply"}\n{oops\n')
    with pytest.raises(ValueError, match="samples.jsonl:2: not JSON"):
        load_shape_samples(out)
    arrays = out / "samples.npz"
    arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    with pytest.raises(ValueError, match="samples.npz: corrupt or truncated"):
        load_shape_samples(out)
    np.savez(arrays, other=np.zeros(3))
    with pytest.raises(ValueError, match="no 'points' array"):
        load_shape_samples(out)


def test_read_point_cloud_formats(tmp_path):
    cloud = _clouds(1, 50)[0].numpy()
    export_point_clouds(tmp_path / "s", cloud[None], preview_max=0)
    np.save(tmp_path / "c.npy", cloud)
    np.savetxt(tmp_path / "c.xyz", cloud, fmt="%.9g")
    np.savetxt(tmp_path / "c.txt", cloud, fmt="%.9g", delimiter="\t")
    np.savetxt(tmp_path / "n.xyz", np.hstack([cloud, cloud]), fmt="%.9g")   # xyz + normals
    for name in ("s/000000.ply", "c.npy", "c.xyz", "c.txt", "n.xyz"):
        got = read_point_cloud(tmp_path / name)
        assert got.dtype == np.float32 and np.array_equal(got, cloud), name
    trimesh.creation.box().export(tmp_path / "mesh.ply")                      # a mesh: its vertices
    assert read_point_cloud(tmp_path / "mesh.ply").shape == (8, 3)
    (tmp_path / "one.txt").write_text("1 2 3\n")
    assert read_point_cloud(tmp_path / "one.txt").tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("name, content, message", [
    ("two.txt", "1 2\n3 4\n", "expected 3 columns"),
    ("ragged.xyz", "1 2 3\n4 5\n", "unreadable point cloud"),
    ("words.txt", "x y z\n", "unreadable point cloud"),
    ("nan.xyz", "1 2 3\nnan 0 0\n", "non-finite coordinates: NaN/inf in 1 of 2 points"),
    ("empty.txt", "", "no points"),
    ("bad.ply", b"ply\nformat garbage\n", "unreadable point cloud"),
    ("bad.npy", b"not numpy", "unreadable point cloud"),
    ("four.npy", np.zeros((5, 4)), "expected 3 columns"),
    ("empty.npy", np.zeros((0, 3)), "no points"),
    ("cloud.obj", "v 0 0 0\n", "unsupported point cloud format"),
    ("huge.xyz", "1 2 3\n1e39 0 0\n", "non-finite coordinates: NaN/inf in 1 of 2 points"),   # inf as float32
    ("inf.npy", np.array([[0, 0, 0], [np.inf, 0, 0]]), "non-finite coordinates"),
    ("words.npy", np.array([["1", "2", "3"]]), "expected numbers"),
    ("binary.xyz", bytes(range(256)), "unreadable point cloud"),
])
def test_read_point_cloud_rejects_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_point_cloud(path)
    assert str(error.value).startswith(f"{path}: ") and len(str(error.value).splitlines()) == 1


def test_completion_refuses_a_non_finite_partial_cloud():
    partial = np.zeros((10, 3), np.float32)
    partial[3, 1] = np.nan
    with pytest.raises(DataError, match=r"part.xyz: non-finite coordinates: NaN/inf in 1 of 10 points \(first: #4\)"):
        complete(None, partial, torch.tensor([0]), steps=2, seed=0, source="part.xyz")   # refused before any model


def test_read_point_cloud_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ply: no such file"):
        read_point_cloud(tmp_path / "missing.ply")
