"""The shapes2d judge: is an image one clean shape of a recognisable colour and kind?

Built from the spec in DESIGN.md (no learned classifier): black background, one filled axis-aligned
circle / square / upright triangle of extent 2r ∈ [0.4, 0.7]·size with a 1-px margin, one colour
whose channel is 180-255 and the others 0-60, no anti-aliasing. Every threshold below keeps slack
around the spec so that good generated samples (slightly soft, slightly noisy) pass while
ambiguous ones (two shapes, blurred, faded, mixed colours, wrong geometry, noise) do not.
Everything is vectorised over the batch; ``scipy.ndimage`` labels components of all images at once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from modalities.image.data import COLORS, SHAPES

FOREGROUND_MIN = 100        # max channel above this is shape (spec: shape >= 180, background 0)
STRAY_FRACTION = 0.05       # foreground outside the main component, relative to its area
BACKGROUND_MEAN_MAX = 20    # mean max-channel of the background (spec: 0)
DOMINANT_MIN = 150          # interior mean of the colour's channel (spec: 180..255)
MINOR_MAX = 90              # interior mean of the other two channels (spec: 0..60)
PURITY_MIN = 0.95           # fraction of shape pixels whose brightest channel is the colour's
UNIFORM_TOLERANCE = 40      # interior pixels within this of the interior mean ...
UNIFORM_MIN = 0.90          # ... must be at least this fraction (spec: one flat colour)
SOFT_PER_EDGE_MAX = 2.0     # pixels at 20-80% of the shape's brightness per edge pixel (spec: 0)
ASPECT_RANGE = (0.75, 1.33)     # bounding-box width / height (spec: 1)
EXTENT_RANGE = (0.32, 0.78)     # max(h, w) / size (spec: 2r/size ∈ [0.4, 0.7], ±1 px rasterised)
TEMPLATE_IOU_MIN = 0.80         # IoU with the ideal shape fitted to the bounding box
FILL_RANGES = {"circle": (0.66, 0.88), "square": (0.88, 1.01), "triangle": (0.38, 0.66)}
TAPER_MAX = 0.6             # triangle: mean width of the top third / bottom third (ideal ~0.2)
SYMMETRY_MIN = 0.85         # overlap of the shape with its left-right mirror image
CHECKS = ("empty", "components", "background", "sharpness", "color", "purity", "uniformity",
          "border", "aspect", "size", "kind")
_COLOR_CHECKS = ("color", "purity", "uniformity")
_SHAPE_CHECKS = ("aspect", "size", "kind")


def _per_image(structure_2d: np.ndarray) -> np.ndarray:
    """A 3-D structuring element that never connects neighbouring images of a batch."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = structure_2d
    return structure


_SQUARE = _per_image(np.ones((3, 3), dtype=bool))
_CROSS = _per_image(ndimage.generate_binary_structure(2, 1))


def to_pixel_scale(images) -> np.ndarray:
    """float [-1, 1] or uint8, [N, 3, H, W] / [N, H, W, 3] / one image -> float32 [N, 3, H, W] in 0..255."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or 3 not in (array.shape[1], array.shape[-1]):
        raise ValueError(f"expected RGB images [N, 3, H, W] or [N, H, W, 3], got shape {array.shape}")
    if array.shape[1] != 3:
        array = array.transpose(0, 3, 1, 2)
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    return np.clip((array.astype(np.float32) + 1.0) * 127.5, 0.0, 255.0)


@dataclass
class Judgement:
    """Per-image results: ``color`` / ``shape`` are indices into COLORS / SHAPES, -1 if unrecognised;
    ``failed[check]`` is a boolean array per check in CHECKS."""
    valid: np.ndarray
    color: np.ndarray
    shape: np.ndarray
    failed: dict

    def verdicts(self) -> list[tuple[bool, str | None, str | None]]:
        return [(bool(v), COLORS[c] if c >= 0 else None, SHAPES[s] if s >= 0 else None)
                for v, c, s in zip(self.valid, self.color, self.shape)]


def _main_component(foreground: np.ndarray) -> np.ndarray:
    """Mask of the largest 8-connected foreground component of each image."""
    labels, count = ndimage.label(foreground, structure=_SQUARE)
    main = np.zeros(len(foreground), dtype=np.int64)
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        image_of = np.zeros(count + 1, dtype=np.int64)
        image_of[labels.ravel()] = np.repeat(np.arange(len(foreground)), foreground[0].size)
        image_of = image_of[1:]
        order = np.lexsort((-sizes, image_of))                  # by image, largest first
        images, first = np.unique(image_of[order], return_index=True)
        main[images] = order[first] + 1
    return (labels == main[:, None, None]) & (main[:, None, None] > 0)


def _templates(top, bottom, left, right, area, height: int, width: int) -> np.ndarray:
    """Ideal circle / square / triangle with the bounding box's centre (the triangle: its base
    row) and the component's area (more robust than the rasterised extent): bool [3, N, H, W]."""
    ys = np.arange(height)[None, :, None] + 0.5
    xs = np.arange(width)[None, None, :] + 0.5
    x0, x1 = left[:, None, None], right[:, None, None] + 1.0
    y0, y1 = top[:, None, None], bottom[:, None, None] + 1.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    area = area[:, None, None].astype(np.float64)
    circle = (xs - cx) ** 2 + (ys - cy) ** 2 <= area / np.pi           # area = pi r^2
    square = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    depth = ys - (y1 - 2 * np.sqrt(area / 2))                         # area = 2 r^2, apex 2r up
    triangle = (ys <= y1) & (np.abs(xs - cx) <= depth / 2)
    return np.stack([circle, square, triangle])


def _color_checks(pixels, main, failed) -> np.ndarray:
    """One flat colour: its channel bright, the others dark, every pixel the same hue. -> colour index."""
    n = len(pixels)
    interior = ndimage.binary_erosion(main, structure=_SQUARE)      # edges may be soft in samples
    interior = np.where(interior.any((1, 2))[:, None, None], interior, main)
    interior_area = np.maximum(interior.sum((1, 2)), 1)
    mean_rgb = (pixels * interior[:, None]).sum((2, 3)) / interior_area[:, None]       # [N, 3]
    color = mean_rgb.argmax(1)
    dominant = mean_rgb[np.arange(n), color]
    failed["color"] = (dominant < DOMINANT_MIN) | (np.sort(mean_rgb, 1)[:, 1] > MINOR_MAX)
    same_hue = (pixels.argmax(1) == color[:, None, None]) & main
    failed["purity"] = same_hue.sum((1, 2)) < PURITY_MIN * main.sum((1, 2))
    channel = np.take_along_axis(pixels, color[:, None, None, None], 1)[:, 0]          # [N, H, W]
    close = (np.abs(channel - dominant[:, None, None]) <= UNIFORM_TOLERANCE) & interior
    failed["uniformity"] = close.sum((1, 2)) < UNIFORM_MIN * interior_area
    # No anti-aliasing: few pixels at intermediate brightness, relative to the outline's length.
    brightness, level = pixels.max(1), dominant[:, None, None]
    soft = (brightness >= 0.2 * level) & (brightness <= 0.8 * level)
    edge = main & ~ndimage.binary_erosion(main, structure=_CROSS)
    failed["sharpness"] = soft.sum((1, 2)) > SOFT_PER_EDGE_MAX * np.maximum(edge.sum((1, 2)), 1)
    return color


@dataclass(frozen=True)
class ShapeLimits:
    """The size and fill ranges the kind checks accept (moving_shapes' smaller shapes rasterise fuller)."""
    extent: tuple[float, float] = EXTENT_RANGE
    fill: tuple[tuple[float, float], ...] = tuple(FILL_RANGES[s] for s in SHAPES)


def _shape_checks(main, failed, limits: ShapeLimits) -> np.ndarray:
    """Placement, size and kind of the main component. -> shape index."""
    _, height, width = main.shape
    area = main.sum((1, 2))
    rows, cols = main.any(2), main.any(1)
    top, bottom = rows.argmax(1), height - 1 - rows[:, ::-1].argmax(1)
    left, right = cols.argmax(1), width - 1 - cols[:, ::-1].argmax(1)
    box_h, box_w = bottom - top + 1, right - left + 1
    failed["border"] = (top < 1) | (left < 1) | (bottom > height - 2) | (right > width - 2)
    aspect = box_w / np.maximum(box_h, 1)
    failed["aspect"] = (aspect < ASPECT_RANGE[0]) | (aspect > ASPECT_RANGE[1])
    extent = np.maximum(box_h, box_w) / min(height, width)
    failed["size"] = (extent < limits.extent[0]) | (extent > limits.extent[1])

    templates = _templates(top, bottom, left, right, area, height, width)
    iou = (templates & main).sum((2, 3)) / np.maximum((templates | main).sum((2, 3)), 1)  # [3, N]
    kind = iou.argmax(0)
    fill = area / np.maximum(box_h * box_w, 1)             # disk pi/4, square 1, triangle 1/2
    low = np.array([low for low, _ in limits.fill])[kind]
    high = np.array([high for _, high in limits.fill])[kind]
    # Upright triangle: the top third of the rows is much narrower than the bottom third.
    row_index, third = np.arange(height)[None, :], np.maximum(box_h // 3, 1)[:, None]
    widths = main.sum(2)                                                                 # [N, H]
    top_rows = (row_index >= top[:, None]) & (row_index < top[:, None] + third)
    bottom_rows = (row_index <= bottom[:, None]) & (row_index > bottom[:, None] - third)
    taper = (widths * top_rows).sum(1) / np.maximum((widths * bottom_rows).sum(1), 1)
    mirror = np.clip((left + right)[:, None, None] - np.arange(width)[None, None, :], 0, width - 1)
    mirrored = np.take_along_axis(main, np.broadcast_to(mirror, main.shape), 2)
    symmetry = (mirrored & main).sum((1, 2)) / np.maximum(area, 1)
    failed["kind"] = ((iou.max(0) < TEMPLATE_IOU_MIN) | (fill < low) | (fill >= high)
                      | ((kind == 2) & (taper > TAPER_MAX)) | (symmetry < SYMMETRY_MIN))
    return kind


def _judge_chunk(pixels: np.ndarray, limits: ShapeLimits) -> tuple[np.ndarray, np.ndarray, dict]:
    brightness = pixels.max(1)                                                           # [N, H, W]
    foreground = brightness > FOREGROUND_MIN
    main = _main_component(foreground)
    area = main.sum((1, 2))
    failed = {"empty": area == 0}
    failed["components"] = foreground.sum((1, 2)) - area > np.maximum(2, STRAY_FRACTION * area)
    background = ~ndimage.binary_dilation(foreground, structure=_SQUARE)
    bg_mean = (brightness * background).sum((1, 2)) / np.maximum(background.sum((1, 2)), 1)
    failed["background"] = bg_mean > BACKGROUND_MEAN_MAX
    color = _color_checks(pixels, main, failed)
    kind = _shape_checks(main, failed, limits)
    for check in CHECKS[1:]:        # nothing else is meaningful for an empty image
        failed[check] = failed[check] | failed["empty"]
    return color, kind, failed


def judge(images, chunk: int = 2048, limits: ShapeLimits = ShapeLimits()) -> Judgement:
    """Judge a batch of images (float [-1, 1] or uint8; channel-first or channel-last)."""
    pixels = to_pixel_scale(images)
    colors, kinds, failed = [], [], {check: [] for check in CHECKS}
    for start in range(0, len(pixels), chunk):
        color, kind, fails = _judge_chunk(pixels[start:start + chunk], limits)
        colors.append(color)
        kinds.append(kind)
        for check in CHECKS:
            failed[check].append(fails[check])
    failed = {check: np.concatenate(parts) if parts else np.zeros(0, bool) for check, parts in failed.items()}
    color_bad = np.logical_or.reduce([failed[c] for c in ("empty",) + _COLOR_CHECKS])
    shape_bad = np.logical_or.reduce([failed[c] for c in ("empty",) + _SHAPE_CHECKS])
    valid = ~np.logical_or.reduce([failed[c] for c in CHECKS])
    color = np.where(color_bad, -1, np.concatenate(colors) if colors else np.zeros(0, np.int64))
    shape = np.where(shape_bad, -1, np.concatenate(kinds) if kinds else np.zeros(0, np.int64))
    return Judgement(valid, color, shape, failed)


def judge_image(image) -> tuple[bool, str | None, str | None]:
    """(valid, colour or None, shape or None) for one image."""
    return judge(image).verdicts()[0]


_PROMPT = re.compile(rf"^\s*(?:an?\s+)?({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\s*$", re.IGNORECASE)


def parse_prompt(prompt: str) -> tuple[int, int]:
    """"a red circle" -> (color index, shape index); raises ValueError for anything else."""
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"not a shapes2d prompt ('a {{color}} {{shape}}'): {prompt!r}")
    return COLORS.index(match.group(1).lower()), SHAPES.index(match.group(2).lower())


def evaluate_samples(images, prompts=None, labels=None) -> dict:
    """valid_rate, prompt_accuracy (valid and colour and shape as prompted; label_accuracy the same
    for class labels 3·shape + colour), per-class counts of
    valid samples, the class entropy normalised to 1 for a uniform spread over the 9 classes, and
    the rate at which each check rejects."""
    result = judge(images)
    n = len(result.valid)
    metrics = {"n": n, "valid_rate": float(result.valid.mean()) if n else 0.0}
    if prompts is not None:
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} images")
        wanted = np.array([parse_prompt(p) for p in prompts], dtype=np.int64).reshape(-1, 2)
        hit = result.valid & (result.color == wanted[:, 0]) & (result.shape == wanted[:, 1])
        metrics["prompt_accuracy"] = float(hit.mean()) if n else 0.0
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images")
        hit = result.valid & (result.color == labels % 3) & (result.shape == labels // 3)
        metrics["label_accuracy"] = float(hit.mean()) if n else 0.0
    counts = np.zeros((len(SHAPES), len(COLORS)), dtype=np.int64)
    np.add.at(counts, (result.shape[result.valid], result.color[result.valid]), 1)
    metrics["class_counts"] = {f"{COLORS[c]} {SHAPES[s]}": int(counts[s, c])
                               for s in range(len(SHAPES)) for c in range(len(COLORS))}
    p = counts.ravel() / max(counts.sum(), 1)
    metrics["class_entropy"] = float(-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(p.size)) + 0.0
    metrics["rejected_by"] = {check: float(result.failed[check].mean()) if n else 0.0 for check in CHECKS}
    return metrics


@torch.no_grad()
def evaluate_reconstructions(first_stage, images: torch.Tensor, captions: list[str] | None = None,
                             batch_size: int = 128) -> dict:
    """The judge on a first stage's reconstructions (posterior mode) of real images in [-1, 1]: the
    ceiling of a latent model whose samples go through the same decoder. Keys as ``evaluate_samples``."""
    parameter = next(first_stage.parameters())
    reconstructions = torch.cat([
        first_stage.decode(first_stage.encode(images[i:i + batch_size].to(parameter.device)).mode())
        .float().clamp(-1, 1).cpu() for i in range(0, len(images), batch_size)])
    return evaluate_samples(reconstructions, prompts=captions)
