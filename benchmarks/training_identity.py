"""Does a refactor move training? Train every preset's stages a few steps (tiny models, fp32, one thread) in two
checkouts and compare the checkpoints byte for byte (weights, EMA and optimizer state).

    git worktree add /tmp/before <commit>
    python benchmarks/training_identity.py /tmp/before .

Prints one line per stage: identical, or the first tensor that differs and by how much.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

COMMON = ["device=cpu", "trainer.precision=fp32", "trainer.log_every=1", "trainer.sample_every=0"]


def presets() -> dict[str, list[str]]:
    """The contract suite's presets and the overrides that make them tiny (one list for both)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "contract"))
    from test_presets import PRESETS

    return PRESETS


def train(checkout: Path, preset: list[str], stages: list[str], run_dir: Path, steps: int) -> None:
    overrides = [f"stages.{s}.{k}={v}" for s in stages for k, v in (("max_steps", steps), ("batch_size", 4),
                                                                     ("checkpoint_every", 0), ("warmup_steps", 0))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "shared.cli", "train", *preset, *COMMON, *overrides,
                           f"run_dir={run_dir}"], cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: training failed:\n{done.stderr[-3000:]}")


def compare(a: Path, b: Path) -> str:
    first, second = load_file(str(a)), load_file(str(b))
    if first.keys() != second.keys():
        return f"different tensors: {sorted(first.keys() ^ second.keys())[:3]}"
    for key in sorted(first):
        if not first[key].equal(second[key]):
            return f"differs first at {key} (max |Δ| {(first[key].double() - second[key].double()).abs().max():.3g})"
    return "identical"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--presets", nargs="*", default=None, help="names of the contract suite's presets "
                        "(default: all; a preset the older checkout lacks fails there)")
    args = parser.parse_args()
    from shared.cli.config import build_config

    with tempfile.TemporaryDirectory() as tmp:
        for name, preset in presets().items():
            if args.presets is not None and name not in args.presets:
                continue
            stages = [s for s, node in build_config("train", preset).stages.items() if node is not None]
            for tag, checkout in (("before", args.before), ("after", args.after)):
                train(checkout.resolve(), preset, stages, Path(tmp) / tag / name, args.steps)
            for stage in stages:
                final = f"checkpoints/{stage}/step_{args.steps:08d}.safetensors"
                verdict = compare(Path(tmp) / "before" / name / final, Path(tmp) / "after" / name / final)
                print(f"{name} {stage}: {verdict}")


if __name__ == "__main__":
    main()
