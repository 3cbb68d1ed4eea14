"""How video_tiny's cost grows with the number of frames T (8, 16, 32), in one run.

For each T, in a fresh process (so peak memory is its own): the preset's video model (randomly initialised:
cost does not depend on the weights) samples ``--videos`` videos of T frames in one batch with the preset's
sampler, guidance and ``--steps`` steps, decoded by the temporal decoder; and one training step (forward +
backward of the video stage's loss on a batch of ``--videos`` videos). Reported: seconds per video, seconds
per training step, and the peak resident memory above the process's state after building the model (CPU;
peak allocated GPU memory on CUDA). T = 32 is generated directly (the temporal attention knows 32 frame
positions), not by extension.

    python benchmarks/video_length_cost.py [--frames 8 16 32] [--videos 4] [--steps 20] [--device cpu]

Prints a markdown table and a one-line JSON summary; ``--out`` keeps ``video_length_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(frames: int, videos: int, steps: int, device: str) -> dict:
    sys.path.insert(0, str(REPO))
    import torch
    from hydra.utils import instantiate

    from modalities.video import components as parts
    from modalities.video.autoencoder import VideoAutoencoder
    from modalities.video.conditions import VideoCondition
    from modalities.video.sampling import generate_videos
    from shared.cli.config import build_config
    from shared.training.randomness import BatchRandomness

    torch.manual_seed(0)
    cfg = build_config("sample", ["experiment=video_tiny", f"steps={steps}", f"device={device}"])
    dev = torch.device(device)
    first_stage = parts.build_first_stage(cfg).to(dev).eval()
    conditioner = parts.build_conditioner(cfg).to(dev)
    denoiser = parts.build_video_denoiser(cfg, parts.build_image_denoiser(cfg, first_stage, conditioner)).to(dev)
    decoder = VideoAutoencoder(first_stage, **cfg.modality.video_decoder.temporal).to(dev).eval()
    loss = instantiate(cfg.loss)
    prompts = ["a red circle moving left"] * videos
    channels, size = parts.latent_shape(cfg, first_stage)

    def peak() -> float:
        if dev.type == "cuda":
            return torch.cuda.max_memory_allocated(dev) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def sample():
        denoiser.eval()
        generate_videos(cfg, denoiser, decoder, conditioner, prompts, steps=steps, seed=0, device=dev,
                        latent_shape=(channels, size), num_frames=frames, window=frames)

    def train_step():
        denoiser.train()
        z = torch.randn(videos, frames, channels, size, size, device=dev)
        cond = VideoCondition(conditioner(prompts).to(dev))
        random = BatchRandomness(0, 0, device=dev)
        t = random.draw(loss.time_sampler, videos, denoiser.schedule).to(dev)
        loss(denoiser, z, cond, t=t, **loss.global_draws(random, z), generator=random.generator).mean().backward()

    base = peak()
    start = time.perf_counter()
    sample()
    sample_seconds = time.perf_counter() - start
    start = time.perf_counter()
    train_step()
    step_seconds = time.perf_counter() - start
    return {"frames": frames, "seconds_per_video": sample_seconds / videos, "seconds_per_train_step": step_seconds,
            "peak_memory_mib_above_model": peak() - base}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.videos, args.steps, args.device)))
        return 0
    rows = []
    for frames in args.frames:
        child = subprocess.run([sys.executable, __file__, "--one", str(frames), "--videos", str(args.videos),
                                "--steps", str(args.steps), "--device", args.device],
                               capture_output=True, text=True, check=True, cwd=REPO)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print("| frames | s per video | × | s per train step | × | peak memory above model (MiB) |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['frames']} | {row['seconds_per_video']:.2f} | {row['seconds_per_video'] / base['seconds_per_video']:.1f} "
              f"| {row['seconds_per_train_step']:.2f} | "
              f"{row['seconds_per_train_step'] / base['seconds_per_train_step']:.1f} | "
              f"{row['peak_memory_mib_above_model']:.0f} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "video_length_cost.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
