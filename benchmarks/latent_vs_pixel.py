"""Latent (KL-f4, 8×8×4) vs pixel (32×32×3) diffusion with the same DiT backbone at an equal wall-clock
budget for the diffusion stage: train-step and sampling cost, and the shapes2d metric each reaches.

The latent side is an existing image_tiny run (default: the `make demo` run); its diffusion stage's
steps and speed fix the budget. The pixel side (image_pixel_tiny) is trained for as many steps as fit
in the same seconds, measured with a short probe first.

    python benchmarks/latent_vs_pixel.py [--latent-run outputs/demo/run] [--out outputs/bench_latent_vs_pixel]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mldm(*args) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"mldm {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def diffusion_speed(run: Path) -> tuple[int, float]:
    """(steps, mean it/s) of a run's diffusion stage, from logs/metrics.csv."""
    with open(run / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["stage"] == "diffusion"]
    return int(rows[-1]["step"]), sum(float(r["it_per_s"]) for r in rows) / len(rows)


def evaluate(run: Path, out: Path, num_samples: int) -> dict:
    start = time.perf_counter()
    metrics = json.loads(mldm("evaluate", f"run_dir={run}", f"num_samples={num_samples}", "steps=20",
                              f"out_dir={out}").strip().splitlines()[-1])
    return {**metrics, "evaluate_seconds": time.perf_counter() - start}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent-run", default="outputs/demo/run")
    parser.add_argument("--num-samples", type=int, default=180)
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--out", default="outputs/bench_latent_vs_pixel")
    args = parser.parse_args(argv)
    out, latent_run = Path(args.out), Path(args.latent_run)
    out.mkdir(parents=True, exist_ok=True)
    latent_steps, latent_rate = diffusion_speed(latent_run)
    budget = latent_steps / latent_rate

    probe = out / "pixel_probe"
    mldm("train", "experiment=image_pixel_tiny", f"run_dir={probe}", f"stages.diffusion.max_steps={args.probe_steps}",
         "trainer.log_every=10", "stages.diffusion.checkpoint_every=0")
    _, pixel_rate = diffusion_speed(probe)
    pixel_steps = max(1, int(budget * pixel_rate))
    pixel_run = out / "pixel_run"
    start = time.perf_counter()
    mldm("train", "experiment=image_pixel_tiny", f"run_dir={pixel_run}", f"stages.diffusion.max_steps={pixel_steps}",
         "trainer.log_every=50", f"stages.diffusion.checkpoint_every={max(pixel_steps // 2, 1)}")
    pixel_seconds = time.perf_counter() - start

    rows = {"latent": {"steps": latent_steps, "it_per_s": latent_rate, "train_seconds": budget,
                       **evaluate(latent_run, out / "latent_samples", args.num_samples)},
            "pixel": {"steps": pixel_steps, "it_per_s": pixel_rate, "train_seconds": pixel_seconds,
                      **evaluate(pixel_run, out / "pixel_samples", args.num_samples)}}
    print(f"{'':<7} {'steps':>6} {'it/s':>6} {'train s':>8} {'valid':>6} {'prompt':>7} {'sample+judge s':>14}")
    for name, r in rows.items():
        print(f"{name:<7} {r['steps']:>6} {r['it_per_s']:>6.1f} {r['train_seconds']:>8.0f} {r['valid_rate']:>6.3f} "
              f"{r['prompt_accuracy']:>7.3f} {r['evaluate_seconds']:>14.1f}")
    result = {"budget_seconds": budget, "rows": rows,
              "step_cost_ratio_pixel_over_latent": latent_rate / pixel_rate}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"step_cost_ratio_pixel_over_latent": round(result["step_cost_ratio_pixel_over_latent"], 2),
                      "latent_prompt_accuracy": rows["latent"]["prompt_accuracy"],
                      "pixel_prompt_accuracy": rows["pixel"]["prompt_accuracy"]}))
    return result


if __name__ == "__main__":
    main()
