"""shapes2d against its spec (DESIGN.md), the image-folder loader and collate."""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from modalities.image.data import (COLORS, SHAPES, BadImageError, ImageFolder, Shapes2D,
                                   caption_for_label, collate, read_image, shape_masks)
from modalities.image.editing import edit_start
from shared.errors import ConfigError, DataError
from shared.io.skipped_inputs import skipped_inputs_log

N = 3000


@pytest.fixture(scope="module")
def shapes():
    dataset = Shapes2D(N, size=32, seed=0)
    images, labels = dataset.materialize()
    return dataset, images, labels, dataset.params(np.arange(N))


def test_deterministic_from_seed_and_index():
    a, b = Shapes2D(50, seed=3), Shapes2D(50, seed=3)
    for i in (0, 7, 49):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    images_a, _ = a.materialize()
    images_b, _ = Shapes2D(50, seed=4).materialize()
    assert not torch.equal(images_a, images_b)
    # Same (seed, index) gives the same image regardless of dataset length or batch composition.
    assert torch.equal(Shapes2D(10, seed=3).render_batch([9, 2])[0], images_a[[9, 2]])
    assert sum(torch.equal(images_a[i], images_b[i]) for i in range(50)) == 0


def test_getitem_matches_batch_rendering_and_contract(shapes):
    dataset, images, labels, _ = shapes
    item = dataset[5]
    assert set(item) == {"image", "caption", "label", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert torch.equal(((item["image"] + 1) * 127.5).round().to(torch.uint8), images[5])
    assert item["label"] == int(labels[5]) and item["index"] == 5
    assert dataset[-1]["index"] == N - 1
    with pytest.raises(IndexError):
        dataset[N]


def test_splits_are_disjoint_index_ranges():
    train, val = Shapes2D(20, split="train"), Shapes2D(20, split="val")
    assert val[0]["index"] == 1_000_000_000
    assert not torch.equal(train.materialize()[0], val.materialize()[0])
    with pytest.raises(ValueError, match="split"):
        Shapes2D(10, split="dev")


def test_radius_centre_and_margin(shapes):
    _, images, _, params = shapes
    assert params.r.min() >= 0.2 * 32 and params.r.max() <= 0.35 * 32
    assert params.r.min() < 0.21 * 32 and params.r.max() > 0.34 * 32          # range is used
    assert np.all(params.cx - params.r >= 1) and np.all(params.cx + params.r <= 31)
    assert np.all(params.cy - params.r >= 1) and np.all(params.cy + params.r <= 31)
    on = images.amax(1) > 0
    assert not on[:, 0].any() and not on[:, -1].any() and not on[:, :, 0].any() and not on[:, :, -1].any()
    assert on.flatten(1).any(1).all()                                          # never empty


def test_colours_exactly_as_spec(shapes):
    _, images, labels, params = shapes
    on = images.amax(1) > 0
    background = images.permute(1, 0, 2, 3)[:, ~on]
    assert background.numel() > 0 and background.max() == 0                    # exact black
    for i in range(0, N, 7):                                                   # one flat colour
        pixels = images[i][:, on[i]]
        assert (pixels == pixels[:, :1]).all()
    color = labels % 3
    rgb = params.rgb.astype(int)
    dominant = rgb[np.arange(N), color.numpy()]
    minors = np.stack([rgb[np.arange(N), (color.numpy() + k) % 3] for k in (1, 2)], 1)
    assert dominant.min() == 180 and dominant.max() == 255
    assert minors.min() == 0 and minors.max() == 60
    assert len(np.unique(dominant)) == 76 and len(np.unique(minors)) == 61


def test_geometry_per_kind(shapes):
    _, images, labels, params = shapes
    on = (images.amax(1) > 0).numpy()
    kind = labels.numpy() // 3
    for i in range(N):
        rows, cols = np.nonzero(on[i].any(1))[0], np.nonzero(on[i].any(0))[0]
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        two_r = 2 * params.r[i]
        assert np.floor(two_r) - 1 <= w <= np.ceil(two_r)                     # width 2r for all kinds
        area = on[i].sum()
        if kind[i] == 1:                                                       # square, side 2r
            assert np.floor(two_r) - 1 <= h <= np.ceil(two_r) and area == h * w
        elif kind[i] == 0:                                                     # disk: area ≈ pi r^2
            assert abs(area / (np.pi * params.r[i] ** 2) - 1) < 0.12 and abs(h - w) <= 1
        else:                                                                  # upright triangle
            widths = on[i].sum(1)[rows[0]:rows[-1] + 1]
            assert np.all(np.diff(widths) >= 0) and widths[0] < widths[-1] / 3  # apex on top
            assert two_r - 3 <= h <= np.ceil(two_r) and abs(area / (2 * params.r[i] ** 2) - 1) < 0.2


def test_masks_follow_the_written_inclusion_rule():
    dataset = Shapes2D(30, size=32, seed=1)
    params = dataset.params(np.arange(30))
    masks = shape_masks(params, 32)
    for i in range(30):
        y, x = np.mgrid[0:32, 0:32] + 0.5
        dx, dy, r = x - params.cx[i], y - params.cy[i], params.r[i]
        expected = [dx ** 2 + dy ** 2 <= r ** 2, (abs(dx) <= r) & (abs(dy) <= r),
                    (dy <= r) & (abs(dx) <= (dy + r) / 2)][params.shape[i]]
        assert np.array_equal(masks[i], expected)


def test_labels_captions_and_class_balance(shapes):
    dataset, _, labels, params = shapes
    assert torch.equal(labels, torch.from_numpy(3 * params.shape + params.color))
    for i in range(60):
        item = dataset[i]
        assert item["caption"] == f"a {COLORS[params.color[i]]} {SHAPES[params.shape[i]]}"
        assert item["caption"] == caption_for_label(item["label"])
    counts = torch.bincount(labels, minlength=9).float()
    assert counts.min() > 0 and (counts / N - 1 / 9).abs().max() < 0.03


def test_materialize_twenty_thousand_and_size_64():
    images, labels = Shapes2D(20_000, seed=2).materialize()
    assert images.shape == (20_000, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (20_000,)
    assert torch.equal(images[12_345], Shapes2D(20_000, seed=2).render_batch([12_345])[0][0])
    big = Shapes2D(10, size=64)[0]["image"]
    assert big.shape == (3, 64, 64)


def test_collate_stacks_and_keeps_captions():
    dataset = Shapes2D(6)
    batch = collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.long
    assert batch["caption"] == [dataset[i]["caption"] for i in range(4)]
    assert batch["index"].tolist() == [0, 1, 2, 3]
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate)
    assert [len(b["caption"]) for b in loader] == [3, 3]


def _write_folder(root):
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8)).save(root / "sub" / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "sub" / "c.PNG")
    (root / "notes.md").write_text("not an image, ignored")


def test_image_folder_resizes_crops_and_reads_captions(tmp_path):
    _write_folder(tmp_path)
    entry = {"file": "sub/b.jpg", "caption": "from jsonl"}
    (tmp_path / "captions.jsonl").write_text(json.dumps(entry) + "\n")
    (tmp_path / "a.txt").write_text("from txt\n")
    dataset = ImageFolder(tmp_path, size=16)
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.files] == ["a.png", "sub/b.jpg", "sub/c.PNG"]
    items = [dataset[i] for i in range(3)]
    for item in items:
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert [item["caption"] for item in items] == ["from txt", "from jsonl", ""]
    assert collate(items)["image"].shape == (3, 3, 16, 16)


def test_image_folder_bad_files(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(1).bytes(500))
    (tmp_path / "sub" / "text.jpg").write_text("this is a text file, not a JPEG")
    with pytest.raises(BadImageError, match="broken.png"):
        ImageFolder(tmp_path)
    (tmp_path / "broken.png").unlink()
    with pytest.raises(BadImageError, match="text.jpg"):
        ImageFolder(tmp_path)
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(1).bytes(500))
    dataset = ImageFolder(tmp_path, size=8, skip_bad=True)
    assert dataset.num_skipped == 2 and len(dataset) == 3
    assert sorted(p.name for p in dataset.skipped) == ["broken.png", "text.jpg"]
    assert all(dataset[i]["image"].shape == (3, 8, 8) for i in range(len(dataset)))


def test_image_folder_truncated_and_empty(tmp_path):
    _write_folder(tmp_path)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="a.png"):
        ImageFolder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        ImageFolder(empty)
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")


def test_image_folder_caption_index_errors(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"file": "nope.png", "caption": "x"}\n')
    with pytest.raises(ValueError, match="nope.png"):
        ImageFolder(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"caption": "x"}\n')
    with pytest.raises(ValueError, match="captions.jsonl:1"):
        ImageFolder(tmp_path)


def test_bad_images_are_data_errors_and_skips_are_reported(tmp_path, capsys):
    _write_folder(tmp_path)
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero.png: cannot read image \(UnidentifiedImageError") as error:
        ImageFolder(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "zero.png")) and len(str(error.value).splitlines()) == 1
    with skipped_inputs_log(tmp_path / "log.txt"):
        dataset = ImageFolder(tmp_path, size=8, skip_bad=True)
    assert dataset.skipped == [tmp_path / "zero.png"] and len(dataset) == 3
    assert f"skipped 1 bad input(s) of {tmp_path}" in capsys.readouterr().err
    assert (tmp_path / "log.txt").read_text().startswith(f"{tmp_path / 'zero.png'}\tcannot read image")
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=rf"{only_bad}: no readable images \(1 skipped\)"):
        ImageFolder(only_bad, skip_bad=True)


def test_float_images_with_nan_are_refused(tmp_path):
    pixels = np.ones((8, 8), np.float32)
    pixels[2, 3] = np.nan
    Image.fromarray(pixels).save(tmp_path / "float.tif")       # PIL would turn NaN into a silent 0
    with pytest.raises(BadImageError, match=r"float.tif: non-finite pixel values: NaN/inf in 1 of 8 pixel rows"):
        read_image(tmp_path / "float.tif", 8)
    assert issubclass(BadImageError, DataError) and issubclass(BadImageError, ValueError)


def test_caption_files_that_are_not_text_are_named(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe caption")
    with pytest.raises(DataError, match=r"a.txt: not UTF-8 text"):
        ImageFolder(tmp_path)
    (tmp_path / "a.txt").unlink()
    (tmp_path / "captions.jsonl").write_text("[" * 5000 + "\n")       # json recursion limit, not a crash
    with pytest.raises(DataError, match=r"captions.jsonl:1: expected"):
        ImageFolder(tmp_path)


@pytest.mark.parametrize("which", ["init", "mask"])
def test_edit_images_name_the_bad_file(tmp_path, which):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    bad.write_bytes(good.read_bytes()[:40])                           # truncated
    files = {"init": bad, "mask": good} if which == "init" else {"init": good, "mask": bad}
    cfg = OmegaConf.create({**{k: str(v) for k, v in files.items()}, "strength": 0.5, "data": {"size": 8}})
    with pytest.raises(DataError, match=rf"{bad}: cannot read image"):
        edit_start(cfg, None, "cpu")
    cfg[which] = str(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="missing.png: no such image file"):
        edit_start(cfg, None, "cpu")
    with pytest.raises(ConfigError, match="strength=2.0"):
        edit_start(OmegaConf.create({"init": str(good), "strength": 2.0, "data": {"size": 8}}), None, "cpu")
