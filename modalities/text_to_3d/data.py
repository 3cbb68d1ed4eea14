"""primitive_views (spec in DESIGN.md): one coloured primitive, rendered from a random camera with
Lambertian shading by the renderer score distillation uses, captioned "a {color} {shape}" (+ DreamFusion's
view suffix). The images a text-to-3D prior is trained on.

Item ``i`` of a split draws from ``np.random.default_rng([seed, split_id, i])``, in order: the kind
(uniform over the primitives), its parameters (the primitives spec's ranges), the colour (shapes2d's rule:
colour uniform, that channel U{180..255}, the other two U{0..60}), azimuth U[0°, 360°), elevation
U[−10°, 45°], then the light: an angle U[0°, 30°] and a Gaussian axis it turns the camera direction about.
Rendered once per split and cached under ``cache_dir`` (``.npz``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modalities.image.data import COLORS, uint8_to_float
from modalities.shape.data import PRIMITIVE_KINDS, SPLIT_IDS
from shared.io.atomic_files import atomic_savez

from .cameras import orbit_cameras, turn, view_suffix
from .primitives import PrimitiveBatch, draw_primitive
from .render import PRIMITIVE_VIEWS_LIGHT, render

ELEVATION = (-10.0, 45.0)
DISTANCE, FOV_Y = 3.0, 45.0
LIGHT_MAX_ANGLE = 30.0
CACHE_VERSION = 1   # bump when the drawing or rendering changes, so old caches are not reused


def caption_for(kind: int, color: int, azimuth: float | None = None) -> str:
    caption = f"a {COLORS[color]} {PRIMITIVE_KINDS[kind]}"
    return caption if azimuth is None else caption + view_suffix(azimuth)


@dataclass(frozen=True)
class ViewParams:
    """Everything that defines a batch of primitive_views images (angles in degrees)."""

    kind: np.ndarray        # int [N], index into PRIMITIVE_KINDS
    params: np.ndarray      # float [N, 3], see primitives.draw_primitive
    scale: np.ndarray       # float [N]
    color: np.ndarray       # int [N], index into COLORS
    rgb: np.ndarray         # uint8 [N, 3], the albedo
    azimuth: np.ndarray     # float [N]
    elevation: np.ndarray   # float [N]
    light_angle: np.ndarray  # float [N]
    light_axis: np.ndarray  # float [N, 3]

    @property
    def labels(self) -> np.ndarray:
        return 3 * self.kind + self.color


def draw_view(rng: np.random.Generator) -> dict:
    kind = int(rng.integers(len(PRIMITIVE_KINDS)))
    params, scale = draw_primitive(kind, rng)
    color = int(rng.integers(len(COLORS)))
    rgb = np.zeros(3, dtype=np.uint8)
    rgb[color] = rng.integers(180, 256)
    rgb[[(color + 1) % 3, (color + 2) % 3]] = rng.integers(0, 61, size=2)
    return {"kind": kind, "params": params, "scale": scale, "color": color, "rgb": rgb,
            "azimuth": rng.uniform(0.0, 360.0), "elevation": rng.uniform(*ELEVATION),
            "light_angle": rng.uniform(0.0, LIGHT_MAX_ANGLE), "light_axis": rng.normal(size=3)}


def render_views(views: ViewParams, size: int = 32, num_samples: int = 64) -> torch.Tensor:
    """uint8 images [N, 3, size, size]: each primitive at the origin from its camera, lit from its light."""
    cameras = orbit_cameras(views.azimuth, views.elevation, DISTANCE, FOV_Y)
    to_camera = torch.nn.functional.normalize(cameras.eye, dim=-1)
    light = turn(to_camera, torch.as_tensor(views.light_angle, dtype=torch.float32),
                 torch.as_tensor(views.light_axis, dtype=torch.float32))
    field = PrimitiveBatch(views.kind, views.params, views.scale, views.rgb.astype(np.float32) / 255.0)
    ambient, diffuse = PRIMITIVE_VIEWS_LIGHT
    with torch.no_grad():
        rgb = render(field, cameras, size, size, num_samples=num_samples, shading="lambertian", light=light,
                     ambient=ambient, diffuse=diffuse)["rgb"]
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)


class PrimitiveViews(torch.utils.data.Dataset):
    """The primitive_views set: items ``{"image": float [3, H, W] in [−1, 1], "caption", "label", "index"}``,
    label = 3·kind + colour (15 classes); captions carry the view suffix unless ``view_suffixes=false``."""

    def __init__(self, num_samples: int = 10_000, size: int = 32, seed: int = 0, split: str = "train",
                 view_suffixes: bool = True, num_ray_samples: int = 64,
                 cache_dir: str | os.PathLike | None = "datasets/primitive_views"):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {list(SPLIT_IDS)}, got {split!r}")
        if size not in (32, 64):
            raise ValueError(f"data.size must be 32 or 64 (the primitive_views spec), got {size}")
        if seed < 0 or num_samples < 0:
            raise ValueError(f"seed and num_samples must be >= 0, got {seed}, {num_samples}")
        self.num_samples, self.size, self.seed, self.split = int(num_samples), int(size), int(seed), split
        self.view_suffixes, self.num_ray_samples = bool(view_suffixes), int(num_ray_samples)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._images: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.num_samples

    def views(self, positions=None) -> ViewParams:
        """The draws of items ``positions`` (default: the whole split, drawn once per instance)."""
        if positions is None:
            return self._split_views
        return self._draw(positions)

    @functools.cached_property
    def _split_views(self) -> ViewParams:
        return self._draw(range(self.num_samples))

    def _draw(self, positions) -> ViewParams:
        draws = [draw_view(np.random.default_rng([self.seed, SPLIT_IDS[self.split], int(i)])) for i in positions]
        if not draws:
            return ViewParams(*(np.zeros((0, 3) if k in ("params", "light_axis", "rgb") else 0)
                                for k in ViewParams.__dataclass_fields__))
        return ViewParams(*(np.stack([d[k] for d in draws]) for k in ViewParams.__dataclass_fields__))

    @functools.cached_property
    def captions(self) -> list[str]:
        views = self.views()
        return [caption_for(int(k), int(c), float(a) if self.view_suffixes else None)
                for k, c, a in zip(views.kind, views.color, views.azimuth)]

    def arrays(self, chunk: int = 256) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """The whole split: uint8 images [N, 3, H, W], captions, labels (rendered once, then cached)."""
        if self._images is None:
            self._images = self._load_cache()
        if self._images is None:
            views = self.views()
            parts = [render_views(ViewParams(*(getattr(views, k)[start:start + chunk]
                                               for k in ViewParams.__dataclass_fields__)),
                                  self.size, self.num_ray_samples) for start in range(0, len(self), chunk)]
            self._images = torch.cat(parts) if parts else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
            self._save_cache(self._images)
        return self._images, self.captions, torch.from_numpy(self.views().labels)

    def __getitem__(self, position: int) -> dict:
        images, captions, labels = self.arrays()
        return {"image": uint8_to_float(images[position]), "caption": captions[position],
                "label": int(labels[position]), "index": int(position)}

    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        key = {"set": "primitive_views", "version": CACHE_VERSION, "num_samples": self.num_samples,
               "size": self.size, "seed": self.seed, "split": self.split, "ray_samples": self.num_ray_samples}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"primitive_views_{self.split}_{digest}.npz"

    def _load_cache(self) -> torch.Tensor | None:
        path = self._cache_path()
        if path is None or not path.exists():
            return None
        try:
            with np.load(path) as arrays:
                images = arrays["images"]
        except Exception:   # a damaged cache is rebuilt, never trusted
            return None
        expected = (self.num_samples, 3, self.size, self.size)
        return torch.from_numpy(images) if images.shape == expected and images.dtype == np.uint8 else None

    def _save_cache(self, images: torch.Tensor) -> None:
        path = self._cache_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_savez(path, {"images": images.numpy()})
