"""How a video_tiny run holds up when it extends its 8-frame videos autoregressively to ``--frames`` frames.

Samples ``--num-samples`` videos of ``--frames`` frames (each window conditioned on the last ``--context``
generated frames; prompts cycling through the 36 captions, seed 0) and judges every 8-frame segment on its own
with ``modalities.video.metrics``: valid frames, consistency and motion within the segment, and whether the
segment's shape keeps the colour and kind of the video's first frame. At 32 px a shape moving 1-2 px/frame
leaves the frame after about 9-18 frames (the spec keeps 8-frame videos inside), so validity must fall in later
segments; what extension should keep is the appearance and the direction while the shape is visible.

    python benchmarks/video_extension.py --run RUN [--frames 24] [--context 2] [--num-samples 64] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modalities.image.metrics import judge  # noqa: E402
from modalities.video.metrics import LIMITS, _frames, evaluate_videos  # noqa: E402
from modalities.video.pipeline import VideoPipeline  # noqa: E402
from shared.cli.config import build_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--context", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    cfg = build_config("sample", [f"run_dir={args.run}", f"steps={args.steps}", f"num_frames={args.frames}",
                                  f"context_frames={args.context}"])
    pipeline = VideoPipeline(cfg, args.run, torch.device("cpu"))
    result = pipeline.sample(args.num_samples, seed=0)
    frames = _frames(result["videos"])                                     # uint8 [N, T, 3, H, W]
    n, t = frames.shape[:2]
    verdict = judge(frames.reshape(n * t, *frames.shape[2:]), limits=LIMITS)
    valid, color, kind = (v.reshape(n, t) for v in (verdict.valid, verdict.color, verdict.shape))
    first = valid[:, 0]
    rows = []
    window = int(cfg.data.num_frames)
    for start in range(0, t, window):
        end = min(start + window, t)
        segment = evaluate_videos(result["videos"][:, start:end], prompts=result["prompts"])
        same = (color[:, start:end] == color[:, :1]) & (kind[:, start:end] == kind[:, :1])
        visible = valid[:, start:end] & first[:, None]
        rows.append({"frames": f"{start + 1}-{end}", "valid_frame_rate": segment["valid_frame_rate"],
                     "consistency": segment["consistency"], "motion": segment["motion"],
                     "direction_accuracy": segment["direction_accuracy"],
                     "keeps_first_look": float(same[visible].mean()) if visible.any() else None})
    print("| frames | valid frames | consistency | motion | direction accuracy | keeps frame 1's colour and kind |\n"
          "|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join("—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
                                for v in row.values()) + " |")
    print(json.dumps({"frames": args.frames, "context": args.context, "segments": rows}))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
