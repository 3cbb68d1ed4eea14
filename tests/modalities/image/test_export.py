"""Image sample directories: files, index, arrays, preview grid, and reading them back."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from modalities.image.data import Shapes2D, uint8_to_float
from modalities.image.export import export_image_samples, load_image_samples, make_grid, to_uint8
from modalities.image.metrics import evaluate_samples
from shared.io.sample_dir import MANIFEST_FILE, overwriting


def test_to_uint8_inverts_the_data_scaling():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    assert torch.equal(to_uint8(uint8_to_float(pixels)), pixels)
    assert np.array_equal(to_uint8(uint8_to_float(pixels).numpy()), pixels.numpy())
    assert to_uint8(torch.tensor([-3.0, 0.0, 5.0])).tolist() == [0, 128, 255]


def test_export_and_load_round_trip(tmp_path):
    images, labels = Shapes2D(11, seed=1).materialize()
    floats = uint8_to_float(images)
    prompts = [Shapes2D(11, seed=1)[i]["caption"] for i in range(11)]
    out = export_image_samples(tmp_path / "s", floats, prompts=prompts, labels=labels, seeds=range(11))
    names = sorted(p.name for p in out.iterdir())
    assert names == [MANIFEST_FILE] + [f"{i:06d}.png" for i in range(11)] + ["grid.png", "samples.jsonl", "samples.npz"]
    assert np.array_equal(np.asarray(Image.open(out / "000003.png")), images[3].permute(1, 2, 0).numpy())
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert records[4] == {"file": "000004.png", "prompt": prompts[4], "label": int(labels[4]), "seed": 4}
    loaded = load_image_samples(out)
    assert np.array_equal(loaded["images"], images.permute(0, 2, 3, 1).numpy())
    assert loaded["prompts"].tolist() == prompts and loaded["labels"].tolist() == labels.tolist()
    assert loaded["seeds"].tolist() == list(range(11))
    assert evaluate_samples(loaded["images"], loaded["prompts"])["prompt_accuracy"] == 1.0
    assert not list(out.glob("*.tmp"))


def test_grid_layout(tmp_path):
    images = torch.zeros(10, 3, 4, 5, dtype=torch.uint8)
    grid = np.asarray(Image.open(export_image_samples(tmp_path, images, per_row=8) / "grid.png"))
    assert grid.shape == (2 * 5 + 1, 8 * 6 + 1, 3)                    # 1-px border around tiles
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all() and (grid[1:5, 1:6] == 0).all()
    assert make_grid(np.zeros((3, 2, 2, 1), np.uint8), per_row=8).shape == (4, 10, 1)


def test_minimal_directory_and_png_fallback(tmp_path):
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    out = export_image_samples(tmp_path, images, save_float=True)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert records == [{"file": f"{i:06d}.png"} for i in range(3)]
    loaded = load_image_samples(out)
    assert loaded["prompts"] is None and loaded["labels"] is None and loaded["seeds"] is None
    assert np.allclose(loaded["images_float"], images.numpy())
    (out / "samples.npz").unlink()                                   # falls back to the PNGs
    assert np.array_equal(load_image_samples(out)["images"], to_uint8(images).permute(0, 2, 3, 1).numpy())


def test_rewrite_removes_stale_samples_and_grayscale(tmp_path):
    export_image_samples(tmp_path, torch.zeros(5, 3, 8, 8))
    (tmp_path / "mine.png").write_bytes(b"user file")
    with overwriting(True):  # the user's file stays; mldm's stale samples go
        export_image_samples(tmp_path, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert sorted(p.name for p in tmp_path.glob("0*.png")) == ["000000.png", "000001.png"]
    assert (tmp_path / "mine.png").exists()
    assert load_image_samples(tmp_path)["images"].shape == (2, 8, 8, 1)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        export_image_samples(tmp_path, torch.zeros(3, 3, 8, 8), prompts=["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        export_image_samples(tmp_path, torch.zeros(3, 8, 8))
    with pytest.raises(FileNotFoundError, match="samples.jsonl"):
        load_image_samples(tmp_path / "nothing")
