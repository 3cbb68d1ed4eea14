"""benchmarks/preset_time.py: the short-run overrides reach every stage, the rate skips the warm-up window,
the projection is the preset's steps over that rate, and a failing variant is recorded while the others
run. One real short run of molecule_qm9_tiny at tiny widths; no wall-clock assertions."""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from pathlib import Path

import pytest

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "preset_time.py"
spec = importlib.util.spec_from_file_location("preset_time", BENCH_PATH)
preset_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(preset_time)

TINY_WIDTHS = ["autoencoder.hidden=8", "autoencoder.decoder_blocks=1", "backbone.hidden=8", "backbone.num_blocks=1",
               "backbone.distance_expansion=0", "stages.autoencoder.batch_size=8", "stages.diffusion.batch_size=8"]


def test_variants_parse():
    assert preset_time.parse_variant("bf16:trainer.precision=bf16,seed=1") == ("bf16", ["trainer.precision=bf16",
                                                                                          "seed=1"])
    assert preset_time.parse_variant("plain:") == ("plain", [])
    with pytest.raises(argparse.ArgumentTypeError):
        preset_time.parse_variant(":seed=1")


def test_short_run_sets_keys_where_the_preset_sets_them():
    stages = preset_time.preset_stages("molecule_qm9_tiny", [])
    assert stages["diffusion"]["max_steps"] == 10000 and stages["autoencoder"]["max_steps"] == 800
    overrides = preset_time.short_run_overrides(stages, steps=30, log_every=10)
    assert "stages.diffusion.max_steps=30" in overrides and "stages.autoencoder.max_steps=30" in overrides
    # the preset sets checkpoint_every per stage, so the trainer-wide value alone would not reach them
    assert {"trainer.checkpoint_every=0", "stages.autoencoder.checkpoint_every=0",
            "stages.diffusion.checkpoint_every=0"} <= set(overrides)
    assert "stages.diffusion.log_every=10" not in overrides and "trainer.log_every=10" in overrides


def test_rate_is_the_median_after_the_first_window(tmp_path):
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", "step", "loss", "it_per_s"])
        writer.writerows([["a", 10, 1.0, 0.5], ["a", 20, 1.0, 4.0], ["a", 30, 1.0, 6.0], ["a", 40, 1.0, 5.0],
                          ["b", 10, 1.0, 2.0]])
    assert preset_time.stage_rates(path) == {"a": {"it_per_s": 5.0, "windows": 4},
                                             "b": {"it_per_s": 2.0, "windows": 1}}


def test_short_run_projects_the_preset_and_records_a_failing_variant(tmp_path):
    args = ["--experiment", "molecule_qm9_tiny", "--steps", "6", "--log-every", "2", "--device", "cpu",
            "--out", str(tmp_path), "--variant", "plain:", "--variant", "broken:trainer.no_such_key=1"]
    for override in TINY_WIDTHS:
        args += ["--override", override]
    results = preset_time.main(args)
    plain, broken = results["variants"]
    assert json.loads((tmp_path / "preset_time.json").read_text())["summary"] == results["summary"]
    for stage, preset_steps in (("autoencoder", 800), ("diffusion", 10000)):
        row = plain["stages"][stage]
        assert row["windows"] == 3 and row["preset_steps"] == preset_steps and row["it_per_s"] > 0
        assert row["projected_hours"] == pytest.approx(preset_steps / row["it_per_s"] / 3600)
    assert plain["projected_hours"] == pytest.approx(sum(s["projected_hours"] for s in plain["stages"].values()))
    assert "error" in broken and results["summary"]["broken"] == "failed"
