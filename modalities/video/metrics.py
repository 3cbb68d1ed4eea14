"""The moving_shapes judge: is a video one clean shape, the same in every frame, moving straight as prompted?

Built from the spec in DESIGN.md, on top of the shapes2d judge (``modalities.image.metrics``) run on every
frame with moving_shapes' smaller sizes. Per video:
  * valid: every frame passes the shapes2d judge;
  * consistent: valid, and every frame shows the same colour and kind;
  * moving: the shape's centroid travels along one axis (drift across it small), at a plausible speed
    (spec 1-2 px/frame), and monotonically (no step backwards);
  * prompt hit: consistent and moving, with the prompted colour, kind and direction;
  * flicker: mean frame-to-frame change of the shape's mean colour (0-255 units; spec 0).
"""
from __future__ import annotations

import re

import numpy as np

from modalities.image.data import COLORS, SHAPES
from modalities.image.metrics import FOREGROUND_MIN, ShapeLimits, judge, to_pixel_scale
from modalities.video.data import DIRECTIONS, MAX_RADIUS, MAX_SPEED, MIN_RADIUS, MIN_SPEED

# max(h, w) / size: spec 2r ∈ [0.24, 0.40]. Fill: at 4-6 px radius rasterisation spreads it (1,000 val videos:
# disks 0.617-0.938, triangles 0.50-0.667); the ranges take all of the data's own frames
LIMITS = ShapeLimits(extent=(2 * MIN_RADIUS - 0.07, 2 * MAX_RADIUS + 0.08),
                     fill=((0.60, 0.95), (0.88, 1.01), (0.38, 0.68)))
SPEED_RANGE = (0.5 * MIN_SPEED, 1.5 * MAX_SPEED)               # px per frame along the motion (spec 1-2)
ACROSS_MAX = 1.5            # px the centroid may drift across the motion over the whole video (spec 0)
BACKSTEP_MAX = 0.5          # px a single step may go against the motion (rasterisation moves centroids)
_PROMPT = re.compile(rf"^\s*(?:an?\s+)?({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\s+moving\s+"
                     rf"({'|'.join(DIRECTIONS)})\s*$", re.IGNORECASE)


def parse_prompt(prompt: str) -> tuple[int, int, int]:
    """"a red circle moving left" -> (colour, shape, direction) indices; ValueError for anything else."""
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"not a moving_shapes prompt ('a {{color}} {{shape}} moving {{direction}}'): {prompt!r}")
    return (COLORS.index(match.group(1).lower()), SHAPES.index(match.group(2).lower()),
            DIRECTIONS.index(match.group(3).lower()))


def _frames(videos) -> np.ndarray:
    """uint8 or float [-1, 1] videos [N, T, H, W, 3] or [N, T, 3, H, W] -> uint8 [N, T, 3, H, W]."""
    array = np.asarray(videos.detach().cpu().numpy() if hasattr(videos, "detach") else videos)
    if array.ndim != 5:
        raise ValueError(f"expected videos [N, T, H, W, 3] or [N, T, 3, H, W], got shape {array.shape}")
    n, t = array.shape[:2]
    pixels = to_pixel_scale(array.reshape(n * t, *array.shape[2:]))                 # [N·T, 3, H, W] in 0..255
    return np.round(pixels).astype(np.uint8).reshape(n, t, *pixels.shape[1:])


def motion(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(moving [N] bool, direction [N] index into DIRECTIONS, -1 if none) from the centroid track of the
    foreground (max channel above the judge's threshold) of ``frames`` uint8 [N, T, 3, H, W]."""
    mask = frames.max(2) > FOREGROUND_MIN                                            # [N, T, H, W]
    area = np.maximum(mask.sum((2, 3)), 1)
    rows, cols = np.arange(mask.shape[2]), np.arange(mask.shape[3])
    cy = (mask.sum(3) * rows).sum(2) / area
    cx = (mask.sum(2) * cols).sum(2) / area
    dx, dy = np.diff(cx, axis=1), np.diff(cy, axis=1)                              # [N, T-1]
    horizontal = np.abs(dx.sum(1)) >= np.abs(dy.sum(1))
    along = np.where(horizontal[:, None], dx, dy)
    across = np.where(horizontal, dy.sum(1), dx.sum(1))
    sign = np.sign(along.sum(1))
    speed = np.abs(along.sum(1)) / max(along.shape[1], 1)
    monotone = (along * sign[:, None] >= -BACKSTEP_MAX).all(1)
    moving = ((speed >= SPEED_RANGE[0]) & (speed <= SPEED_RANGE[1]) & (np.abs(across) <= ACROSS_MAX) & monotone
              & (mask.sum((2, 3)) > 0).all(1))
    direction = np.where(horizontal, np.where(sign < 0, 0, 1), np.where(sign < 0, 2, 3))
    return moving, np.where(moving, direction, -1)


def flicker(frames: np.ndarray) -> np.ndarray:
    """[N]: mean over steps of the largest channel change of the shape's mean colour between frames."""
    mask = (frames.max(2) > FOREGROUND_MIN)[:, :, None]                               # [N, T, 1, H, W]
    colour = (frames.astype(np.float64) * mask).sum((3, 4)) / np.maximum(mask.sum((3, 4)), 1)  # [N, T, 3]
    return np.abs(np.diff(colour, axis=1)).max(2).mean(1)


def evaluate_videos(videos, prompts=None) -> dict:
    """The judge's rates over ``videos`` (and, with ``prompts``, prompt accuracy and its parts)."""
    frames = _frames(videos)
    n, t = frames.shape[:2]
    verdict = judge(frames.reshape(n * t, *frames.shape[2:]), limits=LIMITS)
    valid_frames = verdict.valid.reshape(n, t)
    color, kind = verdict.color.reshape(n, t), verdict.shape.reshape(n, t)
    valid = valid_frames.all(1)
    consistent = valid & (color == color[:, :1]).all(1) & (kind == kind[:, :1]).all(1)
    moving, direction = motion(frames)
    rate = (lambda hits: float(hits.mean()) if n else 0.0)
    metrics = {"n": n, "frames": t, "valid_frame_rate": float(valid_frames.mean()) if n else 0.0,
               "valid_rate": rate(valid), "consistency": rate(consistent), "motion": rate(moving),
               "flicker": float(flicker(frames)[consistent].mean()) if consistent.any() else None}
    if prompts is not None:
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} videos")
        wanted = np.array([parse_prompt(p) for p in prompts], dtype=np.int64).reshape(-1, 3)
        right_look = consistent & (color[:, 0] == wanted[:, 0]) & (kind[:, 0] == wanted[:, 1])
        right_way = moving & (direction == wanted[:, 2])
        metrics.update({"prompt_accuracy": rate(right_look & right_way), "appearance_accuracy": rate(right_look),
                        "direction_accuracy": rate(right_way)})
    return metrics
