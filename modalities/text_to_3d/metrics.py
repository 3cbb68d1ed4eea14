"""The primitive_views judge: is an image one primitive of the prompted colour and kind?

Built from the spec, with no learned classifier. Colour: the dominant channel over the foreground, and
valid only if it dominates clearly (the spec's albedos put it at ≥ 180 against ≤ 60). Kind: the nearest
neighbour in a bank of primitive_views renders (the test split under its own seed, so never a training
image) by L2 distance between shading maps (each image's brightest channel divided by its maximum: the
silhouette and its Lambertian shading, whatever the albedo's brightness). Its accuracy on held-out
renders is the judge's own ceiling (measured in the tests and the README).
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import torch

from modalities.image.data import COLORS
from modalities.image.metrics import to_pixel_scale
from modalities.shape.data import PRIMITIVE_KINDS

from .data import PrimitiveViews

FOREGROUND_MIN = 30        # 0..255: darker pixels are background (the spec's is black; shading ≥ 0.3·180)
MIN_FOREGROUND_PIXELS = 12
COLOR_DOMINANCE = 1.5      # the dominant channel's foreground mean over each other channel's
BANK_SEED, BANK_SIZE = 1000, 6000
MAX_DISTANCE = 0.25        # RMS shading-map distance to the nearest reference; held-out renders: ≤ 0.2
_PROMPT = re.compile(rf"^\s*(?:an?\s+)?({'|'.join(COLORS)})\s+({'|'.join(PRIMITIVE_KINDS)})"
                     r"\s*(?:,\s*(?:front|side|back)\s+view)?\s*$", re.IGNORECASE)


def parse_prompt(prompt: str) -> tuple[int, int]:
    """"a red torus, side view" -> (colour index, kind index); ValueError for anything else."""
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"not a primitive_views prompt ('a {{color}} {{shape}}[, front|side|back view]'): "
                         f"{prompt!r}")
    return COLORS.index(match.group(1).lower()), PRIMITIVE_KINDS.index(match.group(2).lower())


def shading_maps(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 3, H, W] -> float32 [N, H·W]: each image's brightest channel over its maximum."""
    brightest = pixels.max(1).reshape(len(pixels), -1).astype(np.float32)
    return brightest / np.maximum(brightest.max(1, keepdims=True), 1.0)


@lru_cache(maxsize=2)
def reference_bank(size: int = 32, bank_size: int = BANK_SIZE) -> tuple[torch.Tensor, np.ndarray]:
    """(shading maps [B, H·W], kinds [B]) of the bank, rendered once and cached under datasets/."""
    images, _, labels = PrimitiveViews(num_samples=bank_size, size=size, seed=BANK_SEED, split="test").arrays()
    return torch.from_numpy(shading_maps(images.numpy())), (labels.numpy() // len(COLORS))


def judge_views(images, bank_size: int = BANK_SIZE) -> dict[str, np.ndarray]:
    """Per image: ``valid``, ``color`` and ``kind`` indices (−1 where invalid) and ``distance`` to the nearest
    reference render."""
    pixels = to_pixel_scale(images)
    n = len(pixels)
    foreground = pixels.max(1) > FOREGROUND_MIN
    sums = (pixels.astype(np.float64) * foreground[:, None]).sum((2, 3))          # [N, 3]
    color = sums.argmax(1)
    dominant = sums[np.arange(n), color]
    others = np.sort(sums, axis=1)[:, 1]                                           # the runner-up channel
    bank, bank_kinds = reference_bank(pixels.shape[-1], bank_size)
    maps = torch.from_numpy(shading_maps(pixels))
    distance, nearest = (torch.cdist(maps, bank).min(1) if n else (torch.zeros(0), torch.zeros(0, dtype=torch.long)))
    distance = distance.numpy() / np.sqrt(maps.shape[1])
    valid = ((foreground.sum((1, 2)) >= MIN_FOREGROUND_PIXELS) & (dominant >= COLOR_DOMINANCE * others)
             & (distance <= MAX_DISTANCE))
    kind = bank_kinds[nearest.numpy()]
    return {"valid": valid, "color": np.where(valid, color, -1), "kind": np.where(valid, kind, -1),
            "distance": distance}


def evaluate_views(images, prompts=None, labels=None, bank_size: int = BANK_SIZE) -> dict:
    """valid_rate; with prompts (or labels 3·kind + colour) color_accuracy, shape_accuracy and
    prompt_accuracy (valid, colour and kind all as prompted); class_entropy of the valid samples over the
    15 classes, normalised to 1 for a uniform spread."""
    verdict = judge_views(images, bank_size)
    n = len(verdict["valid"])
    rate = (lambda hits: float(hits.mean()) if n else 0.0)
    metrics = {"n": n, "valid_rate": rate(verdict["valid"])}
    if prompts is not None or labels is not None:
        wanted = (np.array([parse_prompt(p) for p in prompts], dtype=np.int64).reshape(-1, 2) if prompts is not None
                  else np.stack([np.asarray(labels) % len(COLORS), np.asarray(labels) // len(COLORS)], 1))
        if len(wanted) != n:
            raise ValueError(f"{len(wanted)} prompts for {n} images")
        color_hit, kind_hit = verdict["color"] == wanted[:, 0], verdict["kind"] == wanted[:, 1]
        metrics.update(color_accuracy=rate(color_hit), shape_accuracy=rate(kind_hit),
                       prompt_accuracy=rate(color_hit & kind_hit))
    counts = np.zeros((len(PRIMITIVE_KINDS), len(COLORS)), dtype=np.int64)
    np.add.at(counts, (verdict["kind"][verdict["valid"]], verdict["color"][verdict["valid"]]), 1)
    p = counts.ravel() / max(counts.sum(), 1)
    metrics["class_entropy"] = float(-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(p.size)) + 0.0
    return metrics
