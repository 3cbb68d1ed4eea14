"""The one sample-directory writer every modality uses: files, arrays, previews, and the index last."""
import json

import numpy as np
import pytest

from shared.errors import NonFiniteSamples, RunDirError
from shared.io.sample_dir import (MANIFEST_FILE, add_to_sample_dir, overwriting, read_arrays, read_index,
                                  sample_file_names, write_sample_dir)


def test_writes_files_arrays_previews_and_an_index_naming_each_file(tmp_path):
    files = [("000000.txt", b"a"), (None, None), ("000002.txt", b"c")]
    records = [{"seed": 0}, {"seed": 1, "empty": True}, {"seed": 2}]
    write_sample_dir(tmp_path, files, records, {"x": np.arange(3)}, previews={"grid.png": lambda f: f.write(b"png")})
    assert (tmp_path / "000000.txt").read_bytes() == b"a" and not (tmp_path / "000001.txt").exists()
    assert (tmp_path / "grid.png").read_bytes() == b"png"
    assert read_index(tmp_path) == [{"file": "000000.txt", "seed": 0}, {"file": None, "seed": 1, "empty": True},
                                    {"file": "000002.txt", "seed": 2}]
    assert np.array_equal(read_arrays(tmp_path, required=("x",))["x"], np.arange(3))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_a_directory_of_mldms_own_files_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    write_sample_dir(out, [(n, b"x") for n in sample_file_names(3, ".txt")], [{}] * 3, {})
    write_sample_dir(out, [(n, b"y") for n in sample_file_names(1, ".txt")], [{}], {})
    assert _listing(out) == [MANIFEST_FILE, "000000.txt", "samples.jsonl", "samples.npz"]
    assert (out / "000000.txt").read_bytes() == b"y"
    assert _listing(tmp_path) == ["out"]  # no staging or retired directory left beside it


def test_a_users_files_are_never_lost(tmp_path):
    """The issue's case: a user's folder with photo.png and an old samples.jsonl listing it."""
    (tmp_path / "photo.png").write_bytes(b"mine")
    (tmp_path / "000001.png").write_bytes(b"mine too")
    (tmp_path / "samples.jsonl").write_text(json.dumps({"file": "photo.png"}) + "\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    files = [(n, b"new") for n in sample_file_names(2, ".png")]
    with pytest.raises(RunDirError, match="holds files mldm did not write .*overwrite=true"):
        write_sample_dir(tmp_path, files, [{}] * 2, {})
    with overwriting(True), pytest.raises(RunDirError, match="000001.png: not written by mldm"):
        write_sample_dir(tmp_path, files, [{}] * 2, {})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_overwrite_replaces_only_mldms_own_files(tmp_path):
    write_sample_dir(tmp_path, [(n, b"x") for n in sample_file_names(3, ".txt")], [{}] * 3, {})
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(RunDirError, match=r"\(notes.md\)"):
        write_sample_dir(tmp_path, [(n, b"y") for n in sample_file_names(1, ".txt")], [{}], {})
    with overwriting(True):
        write_sample_dir(tmp_path, [(n, b"y") for n in sample_file_names(1, ".txt")], [{}], {})
    assert _listing(tmp_path) == [MANIFEST_FILE, "000000.txt", "notes.md", "samples.jsonl", "samples.npz"]
    assert (tmp_path / "notes.md").read_text() == "mine"
    with overwriting(True):
        add_to_sample_dir(tmp_path, "metrics.json", "{}")  # listed as mldm's: the next write may replace it
        write_sample_dir(tmp_path, [("a", b"")], [{}], {})
    assert "metrics.json" not in _listing(tmp_path) and "notes.md" in _listing(tmp_path)


def test_non_finite_samples_are_never_written(tmp_path):
    with pytest.raises(NonFiniteSamples, match="1 of 3 samples have non-finite 'x' values; nothing was written"):
        write_sample_dir(tmp_path / "out", [(None, None)] * 3, [{}] * 3, {"x": np.array([[0.0], [np.nan], [1.0]])})
    assert not (tmp_path / "out").exists()


def test_bad_directories_are_named(tmp_path):
    with pytest.raises(ValueError, match="2 sample files for 1 index records"):
        write_sample_dir(tmp_path, [("a", b""), ("b", b"")], [{}], {})
    with pytest.raises(FileNotFoundError, match="samples.jsonl: missing"):
        read_index(tmp_path)
    write_sample_dir(tmp_path, [("a", b"")], [{}], {"x": np.zeros(1000)})
    (tmp_path / "samples.jsonl").write_text(json.dumps({"file": "a"}) + "\n{broken\n")
    with pytest.raises(ValueError, match="samples.jsonl:2: not JSON"):
        read_index(tmp_path)
    with pytest.raises(ValueError, match="no 'y' array"):
        read_arrays(tmp_path, required=("y",))
    data = (tmp_path / "samples.npz").read_bytes()
    (tmp_path / "samples.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="samples.npz: corrupt or truncated"):
        read_arrays(tmp_path)


def test_sample_file_names_widen_past_a_million():
    assert sample_file_names(2, ".png") == ["000000.png", "000001.png"]
    assert sample_file_names(1_000_001, ".xyz")[-1] == "1000000.xyz"


def test_atomic_writes_leave_the_old_file_or_the_new_one_never_half(tmp_path):
    from shared.io.atomic_files import atomic_write, atomic_write_path, atomic_write_text

    target = tmp_path / "sub" / "file.bin"
    atomic_write_text(target, "old")

    def fails_halfway(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails_halfway)
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]
    atomic_write_path(target, lambda temporary: temporary.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]
