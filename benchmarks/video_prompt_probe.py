"""Does a video_tiny run's denoiser read the direction in its prompt? A probe on held-out videos.

Noises ``--num-videos`` held-out moving_shapes videos at a few times t (same noise for every row) and measures
the denoiser's x̂_0 error (mean squared, normalised latents) with the true caption, with the direction's sign
flipped ("left" <-> "right", "up" <-> "down") and with its axis swapped ("left" <-> "up", "right" <-> "down").
A model that uses the direction loses more with the wrong one; equal errors mean that part of the prompt is
ignored. Generation settles the trajectory at high noise, so the high-t columns matter most.

    python benchmarks/video_prompt_probe.py --run RUN [--run RUN2 ...] [--num-videos 48] [--known-frames 1]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modalities.video import components as parts  # noqa: E402
from modalities.video.conditions import with_known_frames  # noqa: E402
from modalities.video.data import MovingShapes  # noqa: E402
from modalities.video.pipeline import VideoPipeline  # noqa: E402
from shared.cli.config import build_config  # noqa: E402
from shared.diffusion.denoiser import broadcast_alpha_sigma  # noqa: E402

TIMES = (0.3, 0.5, 0.7, 0.9)
SIGN = {"left": "right", "right": "left", "up": "down", "down": "up"}
AXIS = {"left": "up", "right": "down", "up": "left", "down": "right"}


def with_direction(caption: str, mapping: dict) -> str:
    *rest, direction = caption.split()
    return " ".join([*rest, mapping[direction]])


@torch.no_grad()
def probe(run: Path, num_videos: int, known_frames: int = 0) -> dict:
    pipeline = VideoPipeline(build_config("sample", [f"run_dir={run}"]), run, torch.device("cpu"))
    videos, captions = parts.load_videos(MovingShapes(num_samples=num_videos, split="val",
                                                      num_frames=pipeline.cfg.data.num_frames))
    z = parts.per_frame(pipeline.image_first_stage.encode_latent, parts.to_model(videos))
    prompts = {"true": captions, "sign flipped": [with_direction(c, SIGN) for c in captions],
               "axis swapped": [with_direction(c, AXIS) for c in captions]}
    conditions = {name: pipeline.conditioner(p) for name, p in prompts.items()}
    if known_frames:  # the leading frames given exactly (image-to-video): only the direction says where it goes
        known = torch.full((len(z),), known_frames, dtype=torch.long)
        conditions = {name: with_known_frames(cond, z, known) for name, cond in conditions.items()}
    generator = torch.Generator().manual_seed(0)
    rows = {name: {} for name in prompts}
    for t in TIMES:
        time = torch.full((len(z),), t, dtype=torch.float64)
        alpha, sigma = broadcast_alpha_sigma(pipeline.denoiser.schedule, time, z)
        x_t = (alpha * z + sigma * torch.randn(z.shape, generator=generator)).float()
        for name, cond in conditions.items():
            rows[name][t] = float((pipeline.denoiser(x_t, time, cond) - z).square().mean())
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--num-videos", type=int, default=48)
    parser.add_argument("--known-frames", type=int, default=0, help="condition on this many leading frames")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {str(run): probe(run, args.num_videos, args.known_frames) for run in args.run}
    print("| run | prompt | " + " | ".join(f"t={t}" for t in TIMES) + " |\n|---|---|" + "---|" * len(TIMES))
    for run, rows in report.items():
        for name, errors in rows.items():
            print(f"| {Path(run).name} | {name} | " + " | ".join(f"{errors[t]:.4f}" for t in TIMES) + " |")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
