"""Image sample directories (the contract of ``shared.io.sample_dir``): one PNG per sample (``000000.png``, ...),
a ``grid.png`` preview, a ``samples.jsonl`` index (``file`` and ``prompt`` / ``label`` / ``seed``
where they apply) and the raw arrays in ``samples.npz``. ``load_image_samples`` reads one back.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.io.data_errors import data_error, describe
from shared.io.animation import chain_preview
from shared.io.sample_dir import ARRAYS_FILE, INDEX_FILE, read_arrays, read_index, sample_file_names, write_sample_dir

GRID_FILE = "grid.png"
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


def _png_bytes(image_hwc: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_hwc[..., 0] if image_hwc.shape[-1] == 1 else image_hwc).save(buffer, format="PNG")
    return buffer.getvalue()


def chain_frames(images, scale: int = 4) -> list[np.ndarray]:
    """Images [T, C, H, W] in [-1, 1] (sample 0 along its denoising chain) as GIF frames, ``scale``× larger."""
    pixels = _channels_last_uint8(images)
    return [np.repeat(np.repeat(frame, scale, 0), scale, 1) for frame in pixels]


def export_image_samples(out_dir, images, prompts=None, labels=None, seeds=None, per_row: int = 8,
                         grid_max: int = 64, save_float: bool = False, chain: list[np.ndarray] | None = None) -> Path:
    """Write a sample directory for ``images`` (float [-1, 1] or uint8, [N, C, H, W]).

    ``prompts`` / ``labels`` / ``seeds`` (length N each, any may be None) go into every index line
    and into the npz. The grid shows the first ``grid_max`` samples. ``save_float`` also stores
    the unclamped float images (float32 [N, C, H, W]) as ``images_float``; ``chain`` (GIF frames) adds
    ``chain.gif``.
    """
    pixels = _channels_last_uint8(images)
    n = len(pixels)
    for name, values in (("prompts", prompts), ("labels", labels), ("seeds", seeds)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} images")
    records = [{} for _ in range(n)]
    for i, record in enumerate(records):
        if prompts is not None:
            record["prompt"] = str(prompts[i])
        if labels is not None:
            record["label"] = int(labels[i])
        if seeds is not None:
            record["seed"] = int(seeds[i])
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
    grid = _png_bytes(make_grid(pixels[:grid_max], per_row))
    files = list(zip(sample_file_names(n, ".png"), (_png_bytes(image) for image in pixels)))
    return write_sample_dir(out_dir, files, records, arrays,
                            previews={GRID_FILE: lambda f: f.write(grid), **chain_preview(chain)})


def _decode_indexed(out_dir: Path, records: list[dict]) -> np.ndarray:
    """uint8 [N, H, W, C] of the PNG files the index names; an unreadable or odd-sized one is named."""
    decoded = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise data_error(out_dir / INDEX_FILE, f"entry {number}: names no image file")
        path = out_dir / record["file"]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image)
        except Exception as exc:  # PIL raises many types
            raise data_error(path, f"index entry {number}: cannot read image ({describe(exc)})") from exc
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if decoded and pixels.shape != decoded[0].shape:
            raise data_error(path, f"{pixels.shape} pixels, but the first image has {decoded[0].shape}")
        decoded.append(pixels)
    return np.stack(decoded) if decoded else np.zeros((0, 0, 0, 3), np.uint8)


def load_image_samples(out_dir) -> dict:
    """Read a sample directory back: ``records`` (the index lines), ``images`` uint8 [N, H, W, C],
    and ``prompts`` / ``labels`` / ``seeds`` (None where absent). Uses ``samples.npz`` when present,
    otherwise decodes the PNG files the index names."""
    out_dir = Path(out_dir)
    records = read_index(out_dir)
    if (out_dir / ARRAYS_FILE).exists():
        loaded = read_arrays(out_dir, required=("images",))
    else:
        loaded = {"images": _decode_indexed(out_dir, records)}
    if len(loaded["images"]) != len(records):
        raise data_error(out_dir, f"{len(records)} index lines but {len(loaded['images'])} images")

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
