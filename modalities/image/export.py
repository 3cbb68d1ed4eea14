"""Image sample directories (the contract in DESIGN.md): one PNG per sample (``000000.png``, ...),
a ``grid.png`` preview, a ``samples.jsonl`` index (``file`` and ``prompt`` / ``label`` / ``seed``
where they apply) and the raw arrays in ``samples.npz``. ``load_image_samples`` reads one back.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.io.atomic_files import atomic_write

INDEX_FILE, ARRAYS_FILE, GRID_FILE = "samples.jsonl", "samples.npz", "grid.png"
GRID_BORDER = 255           # white 1-px lines between tiles (shapes2d backgrounds are black)


def to_uint8(images):
    """float [-1, 1] -> uint8 {0..255} (clamped, rounded); the exact inverse of ``x / 127.5 - 1``.
    Keeps the type (torch tensor or numpy array) and the layout."""
    if isinstance(images, torch.Tensor):
        return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    images = np.asarray(images, dtype=np.float32)
    return np.rint((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)


def _channels_last_uint8(images) -> np.ndarray:
    """[N, C, H, W] (C in 1, 3) float [-1, 1] or uint8, torch or numpy -> uint8 numpy [N, H, W, C]."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C in (1, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = to_uint8(array)
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def make_grid(images_hwc: np.ndarray, per_row: int = 8) -> np.ndarray:
    """Tile uint8 [N, H, W, C] into one image with 1-px GRID_BORDER lines around every tile."""
    n, height, width, channels = images_hwc.shape
    cols = min(per_row, max(n, 1))
    rows = max(1, -(-n // cols))
    grid = np.full((rows * (height + 1) + 1, cols * (width + 1) + 1, channels), GRID_BORDER, np.uint8)
    for i, image in enumerate(images_hwc):
        top, left = 1 + (i // cols) * (height + 1), 1 + (i % cols) * (width + 1)
        grid[top:top + height, left:left + width] = image
    return grid


def _pil(image_hwc: np.ndarray) -> Image.Image:
    return Image.fromarray(image_hwc[..., 0] if image_hwc.shape[-1] == 1 else image_hwc)


def _save_png(image: Image.Image, path: Path):
    atomic_write(path, lambda file: image.save(file, format="PNG"))



def _previous_files(out_dir: Path) -> set[str]:
    index = out_dir / INDEX_FILE
    if not index.exists():
        return set()
    return {json.loads(line)["file"] for line in index.read_text().splitlines() if line.strip()}


def export_image_samples(out_dir, images, prompts=None, labels=None, seeds=None, per_row: int = 8,
                         grid_max: int = 64, save_float: bool = False) -> Path:
    """Write a sample directory for ``images`` (float [-1, 1] or uint8, [N, C, H, W]).

    ``prompts`` / ``labels`` / ``seeds`` (length N each, any may be None) go into every index line
    and into the npz. The grid shows the first ``grid_max`` samples. ``save_float`` also stores
    the unclamped float images (float32 [N, C, H, W]) as ``images_float``. Sample PNGs listed by a
    previous index in ``out_dir`` that this export does not rewrite are removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels = _channels_last_uint8(images)
    n = len(pixels)
    for name, values in (("prompts", prompts), ("labels", labels), ("seeds", seeds)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} images")
    digits = max(6, len(str(n - 1)))
    files = [f"{i:0{digits}d}.png" for i in range(n)]
    records = []
    for i, (name, image) in enumerate(zip(files, pixels)):
        _save_png(_pil(image), out_dir / name)
        record = {"file": name}
        if prompts is not None:
            record["prompt"] = str(prompts[i])
        if labels is not None:
            record["label"] = int(labels[i])
        if seeds is not None:
            record["seed"] = int(seeds[i])
        records.append(record)
    for stale in _previous_files(out_dir) - set(files):
        if Path(stale).name == stale:          # only plain names this exporter wrote
            (out_dir / stale).unlink(missing_ok=True)
    _save_png(_pil(make_grid(pixels[:grid_max], per_row)), out_dir / GRID_FILE)

    arrays = {"images": pixels}
    if prompts is not None:
        arrays["prompts"] = np.array([str(p) for p in prompts], dtype=np.str_)
    if labels is not None:
        arrays["labels"] = np.asarray([int(x) for x in labels], dtype=np.int64)
    if seeds is not None:
        arrays["seeds"] = np.asarray([int(x) for x in seeds], dtype=np.int64)
    if save_float:
        values = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        arrays["images_float"] = values.astype(np.float32)
    atomic_write(out_dir / ARRAYS_FILE, lambda f: np.savez_compressed(f, **arrays))
    lines = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write(out_dir / INDEX_FILE, lambda f: f.write(lines.encode("utf-8")))
    return out_dir


def load_image_samples(out_dir) -> dict:
    """Read a sample directory back: ``records`` (the index lines), ``images`` uint8 [N, H, W, C],
    and ``prompts`` / ``labels`` / ``seeds`` (None where absent). Uses ``samples.npz`` when present,
    otherwise decodes the PNG files the index names."""
    out_dir = Path(out_dir)
    index = out_dir / INDEX_FILE
    if not index.exists():
        raise FileNotFoundError(f"no {INDEX_FILE} in {out_dir}: not a sample directory")
    records = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
    arrays_path = out_dir / ARRAYS_FILE
    if arrays_path.exists():
        with np.load(arrays_path, allow_pickle=False) as arrays:
            loaded = {key: arrays[key] for key in arrays.files}
    else:
        decoded = [np.asarray(Image.open(out_dir / r["file"])) for r in records]
        loaded = {"images": np.stack([d[..., None] if d.ndim == 2 else d for d in decoded])
                  if decoded else np.zeros((0, 0, 0, 3), np.uint8)}
    if len(loaded["images"]) != len(records):
        raise ValueError(f"{out_dir}: {len(records)} index lines but {len(loaded['images'])} images")

    def from_records(key):
        if not records or any(key not in r for r in records):
            return None
        return np.asarray([r[key] for r in records], dtype=np.str_ if key == "prompt" else np.int64)

    result = {"records": records, "images": loaded["images"]}
    for plural, key in (("prompts", "prompt"), ("labels", "label"), ("seeds", "seed")):
        result[plural] = loaded[plural] if plural in loaded else from_records(key)
    if "images_float" in loaded:
        result["images_float"] = loaded["images_float"]
    return result
