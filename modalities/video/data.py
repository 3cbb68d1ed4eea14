"""Video data: the synthetic ``moving_shapes`` set (exact spec in DESIGN.md), written once to MP4 under
``datasets/`` and read back with decord, and a loader for folders of real videos.

Every item is a dict ``{"video": float [T, 3, H, W] in [-1, 1], "caption": str, "label": int,
"direction": int, "index": int}``; the shape and colour rules are shapes2d's (``modalities.image.data``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from modalities.image.data import COLORS, SHAPES, SPLIT_OFFSETS, ShapeParams, render_shapes, uint8_to_float
from modalities.video.files import read_video, write_mp4
from shared.io.atomic_files import atomic_write_text
from shared.io.data_errors import data_error

DIRECTIONS = ("left", "right", "up", "down")
STEP = {0: (-1.0, 0.0), 1: (1.0, 0.0), 2: (0.0, -1.0), 3: (0.0, 1.0)}  # (dx, dy) per px of travel; y grows down
MIN_RADIUS, MAX_RADIUS, MIN_SPEED, MAX_SPEED = 0.12, 0.20, 1.0, 2.0


def caption_for(shape: int, color: int, direction: int) -> str:
    return f"a {COLORS[color]} {SHAPES[shape]} moving {DIRECTIONS[direction]}"


@dataclass(frozen=True)
class MotionParams:
    """One moving_shapes video: the shape of frame 0 and its straight motion."""
    first: ShapeParams      # frame 0 (r, colour and shape hold for every frame)
    direction: np.ndarray   # int [N], index into DIRECTIONS
    speed: np.ndarray       # float [N], px per frame

    def frame(self, t: int) -> ShapeParams:
        dx = np.array([STEP[int(d)][0] for d in self.direction]) * self.speed * t
        dy = np.array([STEP[int(d)][1] for d in self.direction]) * self.speed * t
        return replace(self.first, cx=self.first.cx + dx, cy=self.first.cy + dy)


def longest_video(size: int) -> int:
    """The most frames for which the biggest, fastest shape still fits every frame with the 1-px margin."""
    return 1 + int((size - 2 - 2 * MAX_RADIUS * size) // MAX_SPEED)


def draw_motion(seed: int, indices, size: int = 32, num_frames: int = 8) -> MotionParams:
    """Parameters of videos ``indices``, one generator per (seed, index): ``default_rng([seed, index]).random(10)``
    gives u0 shape, u1 colour, u2 r, u3 direction, u4 speed, u5 start along the motion, u6 across it,
    u7 the dominant channel, u8/u9 the other two (discrete draws ``floor(u * k)``)."""
    if num_frames > longest_video(size):
        raise ValueError(f"num_frames={num_frames}: at size {size} a shape moving up to {MAX_SPEED} px/frame fits "
                         f"at most {longest_video(size)} frames (spec: fully inside every frame)")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    u = np.stack([np.random.default_rng([seed, int(i)]).random(10) for i in indices]) if len(indices) \
        else np.zeros((0, 10))
    shape, color = np.floor(u[:, 0] * 3).astype(np.int64), np.floor(u[:, 1] * 3).astype(np.int64)
    r = (MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * u[:, 2]) * size
    direction = np.floor(u[:, 3] * 4).astype(np.int64)
    speed = MIN_SPEED + (MAX_SPEED - MIN_SPEED) * u[:, 4]
    travel = speed * (num_frames - 1)
    # Along the motion the bounding box sweeps [c0 - r, c0 + travel + r] (or mirrored): it must stay in [1, size - 1].
    room = size - 2 - 2 * r - travel
    forward = (direction == 1) | (direction == 3)
    along = np.where(forward, 1 + r + u[:, 5] * room, 1 + r + travel + u[:, 5] * room)
    across = 1 + r + u[:, 6] * (size - 2 - 2 * r)
    horizontal = direction < 2
    cx, cy = np.where(horizontal, along, across), np.where(horizontal, across, along)
    rgb = np.zeros((len(indices), 3), dtype=np.uint8)
    rows = np.arange(len(indices))
    rgb[rows, color] = 180 + np.floor(u[:, 7] * 76)
    rgb[rows, (color + 1) % 3] = np.floor(u[:, 8] * 61)
    rgb[rows, (color + 2) % 3] = np.floor(u[:, 9] * 61)
    return MotionParams(ShapeParams(shape, color, r, cx, cy, rgb), direction, speed)


def render_videos(params: MotionParams, size: int, num_frames: int) -> np.ndarray:
    """uint8 videos [N, T, H, W, 3]: shapes2d frames of the moving shape."""
    frames = [render_shapes(params.frame(t), size).numpy() for t in range(num_frames)]
    return np.stack(frames, axis=1).transpose(0, 1, 3, 4, 2).copy()


class MovingShapes(torch.utils.data.Dataset):
    """moving_shapes exactly as DESIGN.md specifies it, kept on disk as lossless H.264 MP4 files.

    Item ``i`` of a split is video ``(seed, offset + i)`` (split offsets as shapes2d's). The first use writes
    ``<root>/moving_shapes/<split>-s<seed>-<size>px-<T>f/<index>.mp4`` for every missing item plus
    ``captions.jsonl``; every use reads the frames back with decord (``materialize``), which a test holds
    to the generator's frames within ±3 per channel (the encoding is exact)."""

    def __init__(self, num_samples: int = 2000, size: int = 32, num_frames: int = 8, seed: int = 0,
                 split: str = "train", root: str | Path = "datasets"):
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        self.num_samples, self.size, self.num_frames = int(num_samples), int(size), int(num_frames)
        self.seed, self.split, self.offset = int(seed), split, SPLIT_OFFSETS[split]
        draw_motion(self.seed, [], self.size, self.num_frames)  # checks that num_frames fits
        self.folder = Path(root) / "moving_shapes" / f"{split}-s{self.seed}-{self.size}px-{self.num_frames}f"
        self._frames: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_samples

    def params(self, positions) -> MotionParams:
        return draw_motion(self.seed, np.asarray(positions, dtype=np.int64) + self.offset, self.size, self.num_frames)

    def render(self, positions) -> np.ndarray:
        """The generator's frames uint8 [N, T, H, W, 3] (no file involved)."""
        return render_videos(self.params(positions), self.size, self.num_frames)

    def file(self, position: int) -> Path:
        return self.folder / f"{self.offset + int(position):010d}.mp4"

    def write_missing(self, chunk: int = 256) -> int:
        """Encode every item whose MP4 is not on disk yet; returns how many were written."""
        missing = [i for i in range(len(self)) if not self.file(i).is_file()]
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            for position, frames in zip(part, self.render(part)):
                write_mp4(self.file(position), frames)
        if missing or not (self.folder / "captions.jsonl").is_file():
            self._write_captions()
        return len(missing)

    def _write_captions(self) -> None:
        known = {}
        index = self.folder / "captions.jsonl"
        if index.is_file():
            known = {json.loads(line)["file"]: line for line in index.read_text().splitlines() if line.strip()}
        params = self.params(range(len(self)))
        for i in range(len(self)):
            name = self.file(i).name
            caption = caption_for(int(params.first.shape[i]), int(params.first.color[i]), int(params.direction[i]))
            known[name] = json.dumps({"file": name, "caption": caption})
        atomic_write_text(index, "".join(known[name] + "\n" for name in sorted(known)))

    def materialize(self) -> dict:
        """The split read back from its MP4 files: ``videos`` uint8 [N, T, H, W, 3], ``labels`` (3·shape +
        colour), ``directions``, ``captions``."""
        if self._frames is None:
            self.write_missing()
            self._frames = np.stack([self._read(i) for i in range(len(self))]) if len(self) else \
                np.zeros((0, self.num_frames, self.size, self.size, 3), np.uint8)
        params = self.params(range(len(self)))
        return {"videos": self._frames, "labels": params.first.labels, "directions": params.direction,
                "captions": [caption_for(int(s), int(c), int(d)) for s, c, d in
                             zip(params.first.shape, params.first.color, params.direction)]}

    def _read(self, position: int) -> np.ndarray:
        frames = read_video(self.file(position))
        if frames.shape != (self.num_frames, self.size, self.size, 3):
            raise data_error(self.file(position), f"holds {list(frames.shape)} frames, expected "
                             f"{[self.num_frames, self.size, self.size, 3]} (delete it to have it rewritten)")
        return frames

    def __getitem__(self, position: int) -> dict:
        position = position + len(self) if position < 0 else position
        data = self.materialize()
        video = torch.from_numpy(data["videos"][position]).permute(0, 3, 1, 2)
        return {"video": uint8_to_float(video), "caption": data["captions"][position],
                "label": int(data["labels"][position]), "direction": int(data["directions"][position]),
                "index": self.offset + position}
