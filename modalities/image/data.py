"""Image data: the synthetic ``shapes2d`` set (exact spec in DESIGN.md), a folder loader for real
images, and the collate function both share.

Every item is a dict ``{"image": float [3, H, W] in [-1, 1], "caption": str, "label": int,
"index": int}``; ``collate`` stacks images and labels and keeps captions as a list.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.errors import DataError
from shared.io.captions import folder_captions
from shared.io.data_errors import describe, non_finite_rows
from shared.io.media_folder import media_files, readable_files

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue")
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def caption_for(shape_index: int, color_index: int) -> str:
    return f"a {COLORS[color_index]} {SHAPES[shape_index]}"


def label_for(shape_index: int, color_index: int) -> int:
    return 3 * shape_index + color_index


def caption_for_label(label: int) -> str:
    return caption_for(label // 3, label % 3)


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 {0..255} -> float32 [-1, 1]; ``export.to_uint8`` inverts it exactly."""
    return images.float() / 127.5 - 1.0


@dataclass(frozen=True)
class ShapeParams:
    """Everything that defines one shapes2d image (lengths in pixels; y grows downwards)."""
    shape: np.ndarray   # int [N], index into SHAPES
    color: np.ndarray   # int [N], index into COLORS
    r: np.ndarray       # float [N]
    cx: np.ndarray      # float [N], centre of the shape's bounding box
    cy: np.ndarray      # float [N]
    rgb: np.ndarray     # uint8 [N, 3]

    @property
    def labels(self) -> np.ndarray:
        return 3 * self.shape + self.color


def draw_params(seed: int, indices, size: int = 32) -> ShapeParams:
    """Draw the parameters of images ``indices`` from one generator per (seed, index).

    Each image uses ``np.random.default_rng([seed, index]).random(8)``: u0 -> shape, u1 -> colour,
    u2 -> r, u3/u4 -> centre, u5 -> dominant channel value, u6/u7 -> the other two channels.
    Discrete draws are ``floor(u * k)``, uniform over the k values.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    u = np.stack([np.random.default_rng([seed, int(i)]).random(8) for i in indices]) if len(indices) \
        else np.zeros((0, 8))
    shape = np.floor(u[:, 0] * 3).astype(np.int64)
    color = np.floor(u[:, 1] * 3).astype(np.int64)
    r = (0.2 + 0.15 * u[:, 2]) * size
    # Bounding box [c - r, c + r] of every shape must lie in [1, size - 1] (the 1-px margin).
    cx = (1 + r) + u[:, 3] * (size - 2 - 2 * r)
    cy = (1 + r) + u[:, 4] * (size - 2 - 2 * r)
    dominant = 180 + np.floor(u[:, 5] * 76)          # U{180..255}
    others = np.floor(u[:, 6:8] * 61)                 # U{0..60}
    rgb = np.zeros((len(indices), 3), dtype=np.uint8)
    rows = np.arange(len(indices))
    rgb[rows, color] = dominant
    rgb[rows, (color + 1) % 3] = others[:, 0]
    rgb[rows, (color + 2) % 3] = others[:, 1]
    return ShapeParams(shape, color, r, cx, cy, rgb)


def shape_masks(params: ShapeParams, size: int) -> np.ndarray:
    """Boolean masks [N, size, size]: pixel (i, j) is in the shape iff its centre (j + .5, i + .5) is."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    dx = centres[None, None, :] - params.cx[:, None, None]
    dy = centres[None, :, None] - params.cy[:, None, None]
    r = params.r[:, None, None]
    disk = dx * dx + dy * dy <= r * r
    square = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # Apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r): half-width grows 1/2 per px.
    triangle = (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    kind = params.shape[:, None, None]
    return np.where(kind == 0, disk, np.where(kind == 1, square, triangle))


def render_shapes(params: ShapeParams, size: int) -> torch.Tensor:
    """uint8 images [N, 3, size, size]: the shape in its colour on exact black, no anti-aliasing."""
    masks = shape_masks(params, size)
    images = masks[:, None, :, :] * params.rgb[:, :, None, None]
    return torch.from_numpy(images.astype(np.uint8))


class Shapes2D(torch.utils.data.Dataset):
    """The shapes2d set exactly as DESIGN.md specifies it.

    RGB ``size``² (default 32), black background, one filled axis-aligned shape: circle (disk of
    radius r), square (side 2r), triangle (upright isosceles, apex on top, base 2r, height 2r);
    r ~ U[0.2, 0.35]·size; colour red/green/blue with that channel ~ U{180..255} and the other two
    ~ U{0..60}. Item ``i`` of a split is image ``(seed, offset + i)``, where the split offsets
    (train 0, val 1e9, test 2e9) keep the splits disjoint; ``"index"`` is that generator index.

    Interpretations of the spec (its text leaves these open):
      * Coordinates are continuous with pixel (row i, column j) covering [j, j+1) x [i, i+1); a pixel
        is painted iff its centre is inside the shape (closed sets), so there is no anti-aliasing.
      * "Fully inside with 1 px margin": every shape's bounding box [c - r, c + r]² lies within
        [1, size - 1]², with the centre uniform over that range. Hence rows/columns 0 and size-1 are
        always black. The triangle's centre is the centre of its bounding box (not its centroid).
      * Triangle edges: apex (cx, cy - r), base corners (cx ± r, cy + r); a pixel centre at depth
        d = y - (cy - r) below the apex is inside iff |x - cx| <= d/2 and d <= 2r.
      * The colour is one RGB value per image (the two minor channels drawn independently).
    """

    def __init__(self, num_samples: int = 20_000, size: int = 32, seed: int = 0, split: str = "train"):
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        if size < 7:
            raise ValueError(f"size must be >= 7 so the largest shape fits with the margin, got {size}")
        self.num_samples, self.size, self.seed, self.split = int(num_samples), int(size), int(seed), split
        self.offset = SPLIT_OFFSETS[split]

    def __len__(self) -> int:
        return self.num_samples

    def params(self, positions) -> ShapeParams:
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= self.num_samples):
            raise IndexError(f"index out of range for Shapes2D of length {self.num_samples}")
        return draw_params(self.seed, positions + self.offset, self.size)

    def render_batch(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Images uint8 [N, 3, H, W] and labels int64 [N] for many items at once (vectorised)."""
        params = self.params(positions)
        return render_shapes(params, self.size), torch.from_numpy(params.labels)

    def materialize(self, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split in memory: images uint8 [N, 3, H, W], labels int64 [N]."""
        parts = [self.render_batch(np.arange(start, min(start + chunk, len(self))))
                 for start in range(0, len(self), chunk)]
        if not parts:
            empty = torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
            return empty, torch.zeros(0, dtype=torch.long)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def __getitem__(self, position: int) -> dict:
        if position < 0:
            position += len(self)
        images, labels = self.render_batch([position])
        label = int(labels[0])
        return {"image": uint8_to_float(images[0]), "caption": caption_for_label(label),
                "label": label, "index": self.offset + int(position)}


class BadImageError(DataError):
    """A file with an image suffix that PIL cannot read (or whose float pixels are NaN/inf)."""


def _check_pixels(image: Image.Image, path: Path) -> None:
    """Float images (mode "F", e.g. TIFF) convert NaN/inf to arbitrary bytes without a word: refuse them."""
    if image.mode == "F":
        problem = non_finite_rows(np.asarray(image), "pixel rows")
        if problem is not None:
            raise BadImageError(f"{path}: non-finite pixel values: {problem}")


def _check_image(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()              # structure / checksums, without decoding
        with Image.open(path) as image:
            image.load()                # a real decode: truncated data fails here
            _check_pixels(image, path)
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise BadImageError(f"{path}: cannot read image ({describe(exc)})") from exc


def _load_pixels(path: Path, size: int, mode: str) -> np.ndarray:
    """uint8 [size, size(, 3)] of one file, resized and centre-cropped; any decoding failure names the file."""
    try:
        with Image.open(path) as image:
            image.load()
            _check_pixels(image, path)
            image = resize_center_crop(image.convert(mode), size)
        return np.asarray(image, dtype=np.uint8).copy()
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many types
        raise BadImageError(f"{path}: cannot read image ({describe(exc)})") from exc


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic, antialiased), then crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def read_image(path, size: int, grayscale: bool = False) -> torch.Tensor:
    """One image file as float [-1, 1] [C, size, size] (RGB, or one channel with ``grayscale``), resized and
    centre-cropped as the image folder does; an unreadable file is named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    pixels = torch.from_numpy(_load_pixels(path, size, "L" if grayscale else "RGB"))
    return uint8_to_float(pixels[None] if grayscale else pixels.permute(2, 0, 1))


class ImageFolder(torch.utils.data.Dataset):
    """Every image under ``root`` (recursive; png/jpg/jpeg/webp/bmp, sorted by relative path).

    Images are converted to RGB, resized (shorter side) and centre-cropped to ``size``. Captions
    come from ``root/captions.jsonl`` (lines ``{"file": <path relative to root>, "caption": ...}``)
    or, for images it does not list, from a text file beside the image (``cat.txt`` or
    ``cat.png.txt`` for ``cat.png``); otherwise the caption is ``""``. Labels are -1.

    With ``verify`` (default) every file is opened and decoded at construction, so training never
    meets a bad file mid-run: a bad file raises ``BadImageError`` (a ``DataError``) naming it, or with
    ``skip_bad`` is left out, listed in ``self.skipped`` (``self.num_skipped`` counts them) and reported
    (``shared.io.skipped_inputs``). A bad caption file raises ``DataError`` naming it and the line.
    """

    def __init__(self, root, size: int = 32, skip_bad: bool = False, verify: bool = True):
        self.root, self.size = Path(root), int(size)
        candidates = media_files(self.root, IMAGE_SUFFIXES, "images")
        kept, self.skipped = readable_files(self.root, candidates, _check_image if verify else (lambda path: None),
                                            skip_bad, "images")
        self.files: list[Path] = [path for path, _ in kept]
        self.captions = folder_captions(self.root, self.files, self.files + self.skipped, "images")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        pixels = torch.from_numpy(_load_pixels(self.files[index], self.size, "RGB")).permute(2, 0, 1)
        return {"image": uint8_to_float(pixels), "caption": self.captions[index], "label": -1,
                "index": index if index >= 0 else index + len(self)}


def collate(batch: list[dict]) -> dict:
    """Stack images [B, 3, H, W], labels and indices [B] (int64); keep captions as a list."""
    return {"image": torch.stack([item["image"] for item in batch]),
            "caption": [item["caption"] for item in batch],
            "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),
            "index": torch.tensor([item["index"] for item in batch], dtype=torch.long)}
