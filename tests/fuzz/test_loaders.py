"""Fuzzing every loader of a user's file: random bytes, and valid files truncated, bit-flipped or with
tokens swapped for NaN, inf, huge numbers, odd digits or garbage. Each call must either succeed with
finite arrays or raise one of mldm's user errors (``shared.errors.UserError``; a missing file may be a
``FileNotFoundError``) whose message is one line naming the file; any other exception, or a call that
takes longer than ``CALL_LIMIT_S``, is a bug in the loader. Deterministic (derandomized, no example
database) so CI always runs the same examples; ``MLDM_FUZZ_EXAMPLES=2000`` fuzzes longer locally."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image
from rdkit import Chem
from rdkit.Chem import AllChem

from modalities.image.data import ImageFolder, read_image
from modalities.image.editing import edit_start
from modalities.molecule.files import MoleculeFiles
from modalities.molecule.formats import read_xyz
from modalities.molecule.fragments import read_fragment
from modalities.shape.data import MeshFolder, load_mesh
from modalities.shape.export import read_point_cloud
from shared.errors import UserError

CALL_LIMIT_S = 10.0
FUZZ = settings(max_examples=int(os.environ.get("MLDM_FUZZ_EXAMPLES", 40)), deadline=None, database=None,
                derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ELEMENTS = ("H", "C", "N", "O", "F")
pytestmark = [pytest.mark.timeout(300),   # a backstop for a hang inside C code, which the alarm cannot stop
              pytest.mark.filterwarnings("ignore::RuntimeWarning:trimesh")]   # its maths on the garbage we feed it


# -- running a loader -------------------------------------------------------------------------------
class Hang(BaseException):
    """Not an Exception, so a loader's ``except Exception`` at its file boundary cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float = CALL_LIMIT_S):
    def stop(signum, frame):
        raise Hang(f"a loader call took longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call, path):
    """``call()``'s result, or None when it raised a user error whose one-line message names ``path``."""
    with time_limit():
        try:
            return call()
        except (UserError, FileNotFoundError) as error:
            message = str(error)
            assert str(path) in message, f"the error does not name {path}: {message!r}"
            assert len(message.splitlines()) == 1 and "\n" not in message, f"not one line: {message!r}"
            return None


def assert_finite(*arrays):
    for array in arrays:
        array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        assert np.isfinite(array).all(), "a loader let NaN/inf through"


@contextlib.contextmanager
def folder():
    with tempfile.TemporaryDirectory() as name:   # hypothesis reruns a test body: no function-scoped tmp_path
        yield Path(name)


# -- mutations of valid files -------------------------------------------------------------------------
TOKENS = [b"nan", b"inf", b"-inf", b"NaN", b"1e999", b"-1e39", b"1e39", b"", b"x", b"-1", b"0", b"1", b"3",
          b"99999999999", b"1.5*^-6", "²".encode(), "٣".encode(), b"\x00", b"\xff\xfe", b"\n", b"\r", b"$$$$",
          b"M  END", b"f 1 2 3", b"v 1 1 1", b"3 0 1 7", b"9" * 5000, b"[" * 3000, "\u2028".encode()]
# token swaps weigh most: they keep a file parseable, so the checks after parsing (NaN/inf...) are reached
MUTATION = st.tuples(st.sampled_from(["truncate", "flip", "drop_line", "double_line", "insert"] + ["token"] * 4),
                     st.integers(0, 2**20), st.sampled_from(TOKENS))


def mutate(data: bytes, ops) -> bytes:
    """``data`` after each (kind, position, token) in ``ops``; positions wrap around the current length."""
    for kind, position, token in ops:
        lines = data.split(b"\n")
        if kind == "truncate":
            data = data[:position % (len(data) + 1)]
        elif kind == "flip" and data:
            at = position % len(data)
            data = data[:at] + bytes([data[at] ^ (1 << position % 8)]) + data[at + 1:]
        elif kind == "drop_line":
            del lines[position % len(lines)]
            data = b"\n".join(lines)
        elif kind == "double_line":
            at = position % len(lines)
            data = b"\n".join(lines[:at + 1] + lines[at:])
        elif kind == "token":
            fields = data.split(b" ")
            fields[position % len(fields)] = token
            data = b" ".join(fields)
        else:
            at = position % (len(data) + 1)
            data = data[:at] + token + data[at:]
    return data


def fuzzed(valid: dict[str, bytes]):
    """(suffix, bytes): a valid file of one of the ``valid`` formats mutated, or random bytes."""
    mutated = st.tuples(st.sampled_from(sorted(valid)), st.lists(MUTATION, min_size=1, max_size=3)).map(
        lambda picked: (picked[0], mutate(valid[picked[0]], picked[1])))
    random = st.tuples(st.sampled_from(sorted(valid)), st.binary(max_size=600))
    return st.one_of(mutated, mutated, random)


# -- valid files --------------------------------------------------------------------------------------
def image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def mesh_bytes() -> dict[str, bytes]:
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    as_bytes = lambda data: data.encode() if isinstance(data, str) else data  # noqa: E731
    return {".obj": as_bytes(box.export(file_type="obj")), ".off": as_bytes(box.export(file_type="off")),
            ".ply": as_bytes(box.export(file_type="ply", encoding="ascii")), ".stl": box.export(file_type="stl")}


def cloud_bytes() -> dict[str, bytes]:
    cloud = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    text = "\n".join(" ".join(f"{v:.5g}" for v in row) for row in cloud).encode()
    npy = io.BytesIO()
    np.save(npy, cloud)
    ply = trimesh.PointCloud(cloud).export(file_type="ply")
    return {".xyz": text, ".txt": text, ".npy": npy.getvalue(), ".ply": ply}


def molecule_bytes(smiles: tuple[str, ...]) -> dict[str, bytes]:
    molecules = [Chem.AddHs(Chem.MolFromSmiles(s)) for s in smiles]
    for molecule in molecules:
        AllChem.EmbedMolecule(molecule, randomSeed=0)
    sdf = io.StringIO()
    writer = Chem.SDWriter(sdf)
    for molecule in molecules:
        writer.write(molecule)
    writer.close()
    return {".xyz": "".join(Chem.MolToXYZBlock(m) for m in molecules).encode(), ".sdf": sdf.getvalue().encode()}


PNG, MESHES, CLOUDS = image_bytes("PNG"), mesh_bytes(), cloud_bytes()
IMAGES = {".png": PNG, ".jpg": image_bytes("JPEG"), ".bmp": image_bytes("BMP", "L"), ".webp": image_bytes("WEBP")}
MOLECULES, FRAGMENT = molecule_bytes(("O", "CC=O")), molecule_bytes(("CO",))


# -- images -------------------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(fuzzed(IMAGES), st.just((".png", b""))))   # and a zero-byte file
def test_image_folder(case):
    suffix, data = case
    with folder() as root:
        (root / "good.png").write_bytes(PNG)
        bad = root / f"bad{suffix}"
        bad.write_bytes(data)
        dataset = outcome(lambda: ImageFolder(root, size=8), bad)
        if dataset is not None:
            assert_finite(*(dataset[i]["image"] for i in range(len(dataset))))
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            kept = outcome(lambda: ImageFolder(root, size=8, skip_bad=True), bad)
        assert kept is not None and len(kept) + kept.num_skipped == 2
        assert (f"skipped 1 bad input(s) of {root}" in stderr.getvalue()) == (kept.num_skipped == 1)
        lazy = ImageFolder(root, size=8, verify=False)   # undecoded until an item is read
        for i in range(len(lazy)):
            item = outcome(lambda: lazy[i], lazy.files[i])
            if item is not None:
                assert_finite(item["image"])


CAPTIONS = {".jsonl": b'{"file": "good.png", "caption": "a red square"}\n', ".txt": "a café".encode()}


@FUZZ
@given(fuzzed(CAPTIONS))
def test_caption_files(case):
    suffix, data = case
    with folder() as root:
        (root / "good.png").write_bytes(PNG)
        path = root / ("captions.jsonl" if suffix == ".jsonl" else "good.txt")
        path.write_bytes(data)
        dataset = outcome(lambda: ImageFolder(root, size=8), path)
        if dataset is not None:
            assert isinstance(dataset[0]["caption"], str)


@FUZZ
@given(fuzzed(IMAGES), st.sampled_from(["init", "mask"]))
def test_init_and_mask_images(case, which):
    suffix, data = case
    with folder() as root:
        good, bad = root / "good.png", root / f"bad{suffix}"
        good.write_bytes(PNG)
        bad.write_bytes(data)
        files = {"init": bad, "mask": good} if which == "init" else {"init": good, "mask": bad}
        cfg = OmegaConf.create({**{k: str(v) for k, v in files.items()}, "strength": 0.5, "data": {"size": 8}})
        edit = outcome(lambda: edit_start(cfg, None, "cpu"), bad)
        if edit is not None:
            assert_finite(edit.latent, edit.known)
        image = outcome(lambda: read_image(bad, 8, grayscale=which == "mask"), bad)
        if image is not None:
            assert_finite(image)


# -- meshes and point clouds --------------------------------------------------------------------------
@FUZZ
@given(fuzzed(MESHES))
def test_mesh_files(case):
    suffix, data = case
    with folder() as root:
        path = root / f"bad{suffix}"
        path.write_bytes(data)
        mesh = outcome(lambda: load_mesh(path), path)
        if mesh is not None:
            assert len(mesh.faces) and mesh.area > 0
            assert_finite(mesh.vertices)


@FUZZ
@given(fuzzed(MESHES))
def test_mesh_folder_with_sdf(case):
    suffix, data = case
    with folder() as root:
        (root / "good.obj").write_bytes(MESHES[".obj"])
        bad = root / f"bad{suffix}"
        bad.write_bytes(data)
        options = dict(num_points=16, with_sdf=True, sdf_near=16, sdf_uniform=8, cache_dir=None)
        outcome(lambda: MeshFolder(root, **options), bad)
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            kept = outcome(lambda: MeshFolder(root, skip_bad=True, **options), bad)
        assert kept is not None and len(kept) + len(kept.skipped) == 2
        assert (f"skipped 1 bad input(s) of {root}" in stderr.getvalue()) == (len(kept.skipped) == 1)
        arrays = outcome(kept.materialize, bad)
        if arrays is not None:
            assert_finite(arrays["points"], arrays["sdf_points"], arrays["sdf"])


@FUZZ
@given(fuzzed(CLOUDS))
def test_point_cloud_files(case):   # the reader of shape completion's partial= cloud
    suffix, data = case
    with folder() as root:
        path = root / f"partial{suffix}"
        path.write_bytes(data)
        cloud = outcome(lambda: read_point_cloud(path), path)
        if cloud is not None:
            assert cloud.dtype == np.float32 and cloud.ndim == 2 and cloud.shape[1] == 3 and len(cloud)
            assert_finite(cloud)


# -- molecules ----------------------------------------------------------------------------------------
@FUZZ
@given(fuzzed(MOLECULES), st.booleans())
def test_molecule_files(case, skip_bad):
    suffix, data = case
    with folder() as root:
        path = root / f"molecules{suffix}"
        path.write_bytes(data)
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            molecules = outcome(lambda: MoleculeFiles(path, skip_bad=skip_bad), path)
        if molecules is not None:
            assert len(molecules) and len(molecules.positions) == int(molecules.num_atoms.sum())
            assert_finite(molecules.positions)
            assert (f"skipped {molecules.num_skipped} bad input(s)" in stderr.getvalue()) == bool(molecules.skipped)


@FUZZ
@given(fuzzed(FRAGMENT))
def test_fragment_files(case):   # molecule sampling's partial= fragment
    suffix, data = case
    with folder() as root:
        path = root / f"fragment{suffix}"
        path.write_bytes(data)
        fragment = outcome(lambda: read_fragment(path, ELEMENTS), path)
        if fragment is not None:
            positions, types = fragment
            assert len(positions) == len(types) > 0
            assert_finite(positions)


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=3))
def test_single_xyz_reader(ops):
    with folder() as root:
        path = root / "one.xyz"
        path.write_bytes(mutate(FRAGMENT[".xyz"], ops))
        read = outcome(lambda: read_xyz(path), path)
        if read is not None:
            symbols, coordinates, _ = read
            assert coordinates.shape == (len(symbols), 3)
            assert_finite(coordinates)


# -- videos -------------------------------------------------------------------------------------------
def _video_bytes(lossless: bool) -> bytes:
    from modalities.video.files import write_mp4

    with folder() as root:
        frames = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
        return write_mp4(root / "v.mp4", frames, lossless=lossless).read_bytes()


VIDEOS = {".mp4": _video_bytes(lossless=True), ".mov": _video_bytes(lossless=False)}


@FUZZ
@given(fuzzed(VIDEOS))
def test_video_files(case):   # what moving_shapes reads back and what a video folder opens
    from modalities.video.files import read_video
    from modalities.video.folder import VideoFolder

    suffix, data = case
    with folder() as root:
        path = root / f"clip{suffix}"
        path.write_bytes(data)
        frames = outcome(lambda: read_video(path), path)
        if frames is not None:
            assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        clips = outcome(lambda: VideoFolder(root, size=16, num_frames=2), path)
        item = outcome(lambda: clips[0], path) if clips is not None else None
        if item is not None:
            assert item["video"].shape == (2, 3, 16, 16)
