"""Fuzzing sample-directory reading (the core's readers and each modality's loader): whatever is damaged or
left in a sample directory ends in the project's own one-line error naming the file, never a traceback or a hang."""
import io
import json
import zipfile

import numpy as np
import torch
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modalities.image.export import export_image_samples, load_image_samples
from modalities.molecule.export import export_molecule_samples, load_molecule_samples
from modalities.shape.export import export_meshes, export_point_clouds, load_shape_samples
from modalities.video.export import export_videos, load_video_samples
from shared.errors import UserError
from shared.io.sample_dir import read_arrays, read_index, write_sample_dir

FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _sample_dir(root):
    write_sample_dir(root, [("000000.txt", b"a"), (None, None)], [{"seed": 0}, {"seed": 1}],
                     {"x": np.arange(6.0).reshape(2, 3)})
    return root


@FUZZ
@given(index=st.one_of(st.binary(max_size=200), st.lists(st.one_of(st.text(max_size=30), st.builds(
    json.dumps, st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                             lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                             max_leaves=6))), max_size=4).map(lambda lines: "\n".join(lines).encode())))
def test_any_damaged_index_is_a_named_data_error(tmp_path_factory, index):
    root = _sample_dir(tmp_path_factory.mktemp("s"))
    (root / "samples.jsonl").write_bytes(index)
    try:
        records = read_index(root)
    except UserError as error:
        assert "samples.jsonl" in str(error) and "\n" not in str(error)
    else:
        assert all(isinstance(r, dict) and isinstance(r.get("file"), (str, type(None))) for r in records)


@FUZZ
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
       replace_member=st.booleans())
def test_any_damaged_array_file_is_a_named_data_error(tmp_path_factory, cut, flips, replace_member):
    root = _sample_dir(tmp_path_factory.mktemp("s"))
    path = root / "samples.npz"
    if replace_member:  # a well-formed zip whose member is not an array
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("x.npy", path.read_bytes()[: cut % 64])
        data = bytearray(buffer.getvalue())
    else:
        data = bytearray(path.read_bytes())
        data = data[: cut % (len(data) + 1)] if cut % 3 else data
    for position, value in flips:
        if data:
            data[position % len(data)] ^= value
    path.write_bytes(bytes(data))
    try:
        arrays = read_arrays(root, required=("x",))
    except UserError as error:
        assert "samples.npz" in str(error) and "\n" not in str(error)
    else:
        assert isinstance(arrays["x"], np.ndarray)


def _image_dir(root):
    return export_image_samples(root, torch.rand(2, 3, 8, 8) * 2 - 1, prompts=["a", "b"], seeds=[0, 1])


def _molecule_dir(root):
    positions = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [0, 0, 0], [1.1, 0, 0]])
    return export_molecule_samples(root, positions, torch.tensor([3, 0, 0, 1, 3]), torch.tensor([3, 2]),
                                   [{"seed": 0}, {"seed": 1}])


def _mesh_dir(root):
    box = trimesh.creation.box()
    return export_meshes(root, [box, None], np.random.default_rng(0).random((2, 16, 3)), labels=[0, 0],
                         label_names=["box"])


def _cloud_dir(root):
    return export_point_clouds(root, np.random.default_rng(0).random((2, 16, 3)), labels=[0, 1], label_names=["a", "b"])


def _video_dir(root):
    return export_videos(root, np.random.default_rng(0).integers(0, 255, (2, 3, 16, 16, 3), dtype=np.uint8),
                         prompts=["a red circle moving left", "x"], seeds=[0, 1])


LOADERS = {"image": (_image_dir, load_image_samples), "molecule": (_molecule_dir, load_molecule_samples),
           "mesh": (_mesh_dir, load_shape_samples), "cloud": (_cloud_dir, load_shape_samples),
           "video": (_video_dir, load_video_samples)}
DAMAGE = st.tuples(st.integers(0, 50), st.sampled_from(["delete", "truncate", "flip", "replace"]),
                   st.integers(0, 10_000), st.binary(max_size=64))


@FUZZ
@given(kind=st.sampled_from(sorted(LOADERS)), damages=st.lists(DAMAGE, min_size=1, max_size=3))
def test_any_damaged_modality_sample_directory_is_a_named_error(tmp_path_factory, kind, damages):
    make, load = LOADERS[kind]
    root = make(tmp_path_factory.mktemp(kind) / "s")
    for which, how, where, data in damages:
        files = sorted(p for p in root.iterdir() if p.is_file())
        if not files:
            break
        path = files[which % len(files)]
        content = bytearray(path.read_bytes())
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            path.write_bytes(bytes(content[: where % (len(content) + 1)]))
        elif how == "flip" and content:
            content[where % len(content)] ^= 0xFF
            path.write_bytes(bytes(content))
        else:
            path.write_bytes(data)
    try:
        load(root)
    except (UserError, FileNotFoundError) as error:
        assert "\n" not in str(error) and str(root) in str(error), f"{kind}: {error}"
