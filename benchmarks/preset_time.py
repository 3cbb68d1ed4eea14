"""How long a preset's training takes on this machine, projected from a short run of every stage.

For each variant (a name and hydra overrides, e.g. ``bf16:trainer.precision=bf16``), one
``mldm train experiment=<preset>`` runs every stage of the preset for ``--steps`` optimizer steps
(no intermediate checkpoints), in a fresh process and run directory, one variant after the other.
A stage's rate is the median ``it_per_s`` of the training loop's log windows (``logs/metrics.csv``,
one row per ``--log-every`` steps) after the first window, which holds the warm-up (CUDA context,
allocator growth, autotuning). The projection is the preset's own ``max_steps`` of each stage over
that rate, summed over stages; the start-up of a process and the stage's end (the autoencoder's pass
over the training set for the latent statistics, the final checkpoint) are not in it. With
``--sample N`` the variant's short run then samples N items with the preset's sampler
(``mldm sample``), and the wall time of that command, start-up included, is reported.

    python benchmarks/preset_time.py --experiment molecule_qm9 [--steps 300] [--log-every 50]
        [--variant fp32: --variant bf16:trainer.precision=bf16] [--override data.source=subset ...]
        [--sample 100 --sample-steps 1000] [--device auto] [--out outputs/benchmarks/preset_time]

Writes ``preset_time.json`` (every variant's stage rates, projection, wall times) and ends with a
one-line JSON summary. A variant that fails is recorded with its error and the rest still run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from shared.cli.config import ConfigError, build_config  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` -> (name, overrides); ``name:`` has none."""
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected NAME:key=value,... (overrides may be empty)")
    return name, [item for item in rest.split(",") if item]


def preset_stages(experiment: str, overrides: list[str]) -> dict[str, dict]:
    """The preset's stages with their trainer overrides (max_steps, and whatever else each sets)."""
    cfg = build_config("train", [f"experiment={experiment}", *overrides])
    stages = {name: dict(values or {}) for name, values in (cfg.get("stages") or {}).items() if values is not None}
    for name, values in stages.items():
        values.setdefault("max_steps", int(cfg.trainer.max_steps))
    return stages


def short_run_overrides(stages: dict[str, dict], steps: int, log_every: int) -> list[str]:
    """Every stage cut to ``steps`` steps, logged every ``log_every``, no checkpoints but the last.
    A key is set where the preset sets it (a stage's own value would win over ``trainer.*``)."""
    overrides = [f"stages.{name}.max_steps={steps}" for name in stages]
    for key, value in (("checkpoint_every", 0), ("log_every", log_every), ("sample_every", 0)):
        overrides.append(f"trainer.{key}={value}")
        overrides += [f"stages.{name}.{key}={value}" for name, values in stages.items() if key in values]
    return overrides


def stage_rates(metrics_csv: Path) -> dict[str, dict]:
    """Per stage: the median it/s of the log windows after the first, and the windows' count."""
    windows: dict[str, list[float]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("it_per_s"):
                windows.setdefault(row["stage"], []).append(float(row["it_per_s"]))
    return {stage: {"it_per_s": statistics.median(rates[1:] or rates), "windows": len(rates)}
            for stage, rates in windows.items()}


def run(command: list[str], log: Path) -> float:
    """Run ``command`` with its output in ``log``; the wall seconds, or CalledProcessError."""
    start = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, cwd=REPO,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - start


def measure_variant(args, name: str, variant_overrides: list[str], out: Path) -> dict:
    overrides = [*args.override, *variant_overrides, f"device={args.device}"]
    run_dir = out / f"run_{name}"
    result = {"variant": name, "overrides": variant_overrides, "steps": args.steps}
    try:
        stages = preset_stages(args.experiment, overrides)
        train = [sys.executable, "-m", "shared.cli", "train", f"experiment={args.experiment}", f"run_dir={run_dir}",
                 *overrides, *short_run_overrides(stages, args.steps, args.log_every)]
        result["train_wall_s"] = run(train, out / f"train_{name}.log")
        rates = stage_rates(run_dir / "logs" / "metrics.csv")
        result["stages"] = {stage: {**rates[stage], "preset_steps": int(values["max_steps"]),
                                    "batch_size": values.get("batch_size"),
                                    "projected_hours": values["max_steps"] / rates[stage]["it_per_s"] / 3600}
                            for stage, values in stages.items()}
        result["projected_hours"] = sum(s["projected_hours"] for s in result["stages"].values())
        if args.sample:
            sample = [sys.executable, "-m", "shared.cli", "sample", f"run_dir={run_dir}", f"num_samples={args.sample}",
                      f"steps={args.sample_steps}", f"out_dir={out / f'samples_{name}'}", f"device={args.device}"]
            result["sample_wall_s"] = run(sample, out / f"sample_{name}.log")
            result["samples"], result["sample_steps"] = args.sample, args.sample_steps
    except (ConfigError, subprocess.CalledProcessError, OSError, KeyError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc} (see {out}/*_{name}.log)"
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="molecule_qm9")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per stage in the short run")
    parser.add_argument("--log-every", type=int, default=50, help="steps per timing window")
    parser.add_argument("--variant", type=parse_variant, action="append",
                        help="NAME:key=value,... (repeatable; default: the preset as it is, named 'preset')")
    parser.add_argument("--override", action="append", default=[], help="key=value for every variant")
    parser.add_argument("--sample", type=int, default=0, help="then time `mldm sample` of this many items")
    parser.add_argument("--sample-steps", type=int, default=1000, help="sampler steps of that run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "preset_time")
    args = parser.parse_args(argv)
    if args.steps < 2 * args.log_every:
        parser.error("--steps must hold at least two --log-every windows (the first is warm-up)")
    args.out.mkdir(parents=True, exist_ok=True)

    results = {"experiment": args.experiment, "device": args.device, "overrides": args.override, "variants": []}
    if torch.cuda.is_available() and args.device != "cpu":
        results["gpu"] = torch.cuda.get_device_name()
    for name, overrides in args.variant or [("preset", [])]:
        row = measure_variant(args, name, overrides, args.out)
        results["variants"].append(row)
        print(json.dumps(row), flush=True)
        (args.out / "preset_time.json").write_text(json.dumps(results, indent=2))
    results["summary"] = {row["variant"]: round(row["projected_hours"], 3) if "projected_hours" in row else "failed"
                          for row in results["variants"]}
    (args.out / "preset_time.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({"experiment": args.experiment, "projected_hours": results["summary"]}))
    return results


if __name__ == "__main__":
    main()
