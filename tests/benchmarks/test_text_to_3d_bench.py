"""The text-to-3D benchmark's own measures, in closed form: HSV saturation of the object's pixels, diversity as
the mean pairwise RMS between seeds' views, and its variant parsing."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "text_to_3d.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("text_to_3d_bench", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def views(rgb, opacity) -> torch.Tensor:
    image = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    return torch.cat([image, torch.full((2, 1, 4, 4), float(opacity))], 1)


def test_saturation_counts_the_objects_pixels_only(bench):
    assert bench.saturation(views([0.8, 0.2, 0.2], 1.0)) == pytest.approx(0.75)    # (0.8 − 0.2) / 0.8
    assert bench.saturation(views([0.5, 0.5, 0.5], 1.0)) == 0.0
    assert bench.saturation(views([0.8, 0.2, 0.2], 0.2)) == 0.0                      # no pixel is the object


def test_diversity_is_the_mean_pairwise_rms(bench):
    a, b, c = views([0.0, 0.0, 0.0], 0.0), views([0.0, 0.0, 0.0], 1.0), views([0.0, 0.0, 0.0], 0.5)
    # RMS over the 4 channels: only opacity differs, by 1, 0.5 and 0.5 -> 0.5, 0.25, 0.25
    assert bench.diversity([a, b, c]) == pytest.approx((0.5 + 0.25 + 0.25) / 3, abs=1e-4)
    assert bench.diversity([a, a]) == 0.0


def test_variants_parse_to_checked_settings(bench):
    name, pairs = bench.parse_variant("vsd:distillation=vsd,vsd_lr=0.001,field=voxel")
    settings, kind = bench.settings_of(pairs)
    assert (name, kind, settings.distillation, settings.vsd_lr) == ("vsd", "voxel", "vsd", 0.001)
