"""video_tiny's ablations, side by side on the same seeds, from one finished ``video_tiny`` run (``--source``).

Denoiser rows (all decoded with the image decoder frame by frame, so only the denoiser differs):
  image model frame by frame   the source's image LDM with temporal layers at initialisation (exactly the image
                               model per frame: tests/modalities/video/test_video_backbones.py); no training
  attention + conv (preset)    the source run's own video stage
  <variant>                    a fresh video stage per variant (``--variant name:override ...``), trained with
                               ``init_from=SOURCE`` (the source's autoencoder and image LDM, the preset's steps
                               and seed), e.g. attention only, conv only, all layers trainable, a shifted schedule,
                               the temporal layers cross-attending to the prompt's tokens, rotary frame positions,
                               the video stage on the unweighted v loss (``loss`` applies to it alone: the image
                               stages come from the source), full space-time attention, the prompt whitened
                               over the training captions, a per-frame (index, prompt) embedding
Decoder rows (the source's video model, the same sampled latents; and 64 held-out videos encoded):
  image decoder vs fine-tuned video decoder: flicker (mean frame-to-frame change of the shape's colour, 0..255)
  and per-frame L1 reconstruction error of held-out videos, with the data's own flicker beside them.

Every row samples ``--num-samples`` videos (prompts cycling through the 36 captions, seed 0) with the preset's
sampler and ``--steps`` steps and judges them with ``modalities.video.metrics``.

    python benchmarks/video_ablations.py --source RUN [--num-samples 64] [--steps 20] [--variant attention:...]
        [--out outputs/benchmarks/video_ablations]

Writes ``video_ablations.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modalities.video import components as parts  # noqa: E402
from modalities.video.autoencoder import FrameByFrame  # noqa: E402
from modalities.video.data import MovingShapes  # noqa: E402
from modalities.video.metrics import evaluate_videos, flicker, _frames  # noqa: E402
from modalities.video.pipeline import VideoPipeline  # noqa: E402
from shared.cli.config import build_config  # noqa: E402
from shared.training.checkpoint import load_stage_weights  # noqa: E402
from shared.training.stage_spec import finished  # noqa: E402

DEFAULT_VARIANTS = ["attention only:modality.temporal.layers=[attention]",
                    "conv only:modality.temporal.layers=[conv]",
                    "all trainable:modality.temporal.train_spatial=true",
                    "shifted schedule (x2):modality.temporal.schedule=${schedule_shifted}",
                    "prompt tokens:modality.temporal.prompt_tokens=true",
                    "rotary frame positions:modality.temporal.frame_positions=rotary",
                    "simple loss:loss=simple",
                    "space-time attention (rotary):modality.temporal.span=video,modality.temporal.frame_positions=rotary",
                    "whitened prompt:modality.temporal.text_whitening=true",
                    "whitened prompt + frame embedding + all trainable:modality.temporal.text_whitening=true,"
                    "modality.temporal.frame_embedding=true,modality.temporal.train_spatial=true"]
KEEP = ("valid_rate", "consistency", "motion", "direction_accuracy", "appearance_accuracy", "prompt_accuracy",
        "flicker")


def sample_config(run: Path, steps: int):
    return build_config("sample", [f"run_dir={run}", f"steps={steps}"])


def judge(pipeline: VideoPipeline, num_samples: int) -> dict:
    result = pipeline.sample(num_samples, seed=0)
    metrics = evaluate_videos(result["videos"], prompts=result["prompts"])
    return {k: metrics[k] for k in KEEP}


def image_model_frame_by_frame(source: Path, steps: int, num_samples: int) -> dict:
    pipeline = VideoPipeline(sample_config(source, steps), source, torch.device("cpu"))
    image = parts.build_image_denoiser(pipeline.cfg, pipeline.image_first_stage, pipeline.conditioner)
    load_stage_weights(source, "image_diffusion", {"denoiser": image})
    pipeline.denoiser = parts.build_video_denoiser(pipeline.cfg, image).eval()  # temporal layers at init
    pipeline.decoder = FrameByFrame(pipeline.image_first_stage)
    return judge(pipeline, num_samples)


def trained_variant(source: Path, out: Path, overrides: list[str]) -> float:
    """Train only the video stage with ``overrides``; returns its wall seconds (process start included)."""
    if finished(out, "video_diffusion"):
        return float("nan")  # trained by an earlier call of this script (or by hand with the same overrides)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shared.cli", "train", "experiment=video_tiny", f"init_from={source}",
                    f"run_dir={out}", "stages.decoder=null", *overrides], cwd=REPO, env=env, check=True)
    return time.perf_counter() - start


def decoder_rows(source: Path, steps: int, num_samples: int) -> dict:
    pipeline = VideoPipeline(sample_config(source, steps), source, torch.device("cpu"))
    video_decoder = pipeline.decoder
    data = MovingShapes(num_samples=num_samples, split="val", num_frames=pipeline.cfg.data.num_frames)
    videos, _ = parts.load_videos(data)
    x = parts.to_model(videos)
    rows = {"data": {"flicker": float(flicker(_frames(x)).mean())}}
    with torch.no_grad():
        z = parts.per_frame(pipeline.image_first_stage.encode_latent, x)
        for name, decoder in (("image decoder", FrameByFrame(pipeline.image_first_stage)),
                              ("fine-tuned video decoder", video_decoder)):
            reconstruction = decoder.decode_latent(z).float().clamp(-1, 1)
            pipeline.decoder = decoder
            rows[name] = {**judge(pipeline, num_samples),
                          "reconstruction_flicker": float(flicker(_frames(reconstruction)).mean()),
                          "per_frame_l1": float((reconstruction - x).abs().mean() * 127.5)}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variant", action="append", default=None, help="name:override[,override...]")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "video_ablations")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = {"image model frame by frame": image_model_frame_by_frame(args.source, args.steps, args.num_samples)}
    source_pipeline = VideoPipeline(sample_config(args.source, args.steps), args.source, torch.device("cpu"))
    source_pipeline.decoder = FrameByFrame(source_pipeline.image_first_stage)
    rows["attention + conv (preset)"] = judge(source_pipeline, args.num_samples)
    for spec in args.variant or DEFAULT_VARIANTS:
        name, _, overrides = spec.partition(":")
        overrides = [o.replace("${schedule_shifted}", "{_target_:shared.diffusion.schedules.ShiftedSchedule,shift:2.0,time_of_noise_level:true,"
                                "base:{_target_:shared.diffusion.schedules.CosineSchedule,s:0.008}}")
                     for o in overrides.split(",") if o]
        run = args.out / name.replace(" ", "_").replace("(", "").replace(")", "")
        seconds = trained_variant(args.source, run, overrides)
        pipeline = VideoPipeline(sample_config(run, args.steps), run, torch.device("cpu"))
        rows[name] = {**judge(pipeline, args.num_samples), "train_seconds": seconds}
    decoders = decoder_rows(args.source, args.steps, args.num_samples)
    cpu = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    report = {"source": str(args.source), "num_samples": args.num_samples, "steps": args.steps,
              "cpu_bf16": "native" if ("avx512_bf16" in cpu or "amx_bf16" in cpu) else "emulated",
              "denoisers": rows, "decoders": decoders}
    (args.out / "video_ablations.json").write_text(json.dumps(report, indent=2))
    print("| denoiser | " + " | ".join(KEEP) + " |\n|---|" + "---|" * len(KEEP))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(_cell(row.get(k)) for k in KEEP) + " |")
    print("\n| decoder | flicker (samples) | flicker (reconstructions) | per-frame L1 (0..255) | prompt_accuracy |"
          "\n|---|---|---|---|---|")
    for name, row in decoders.items():
        print(f"| {name} | {_cell(row.get('flicker'))} | {_cell(row.get('reconstruction_flicker'))} | "
              f"{_cell(row.get('per_frame_l1'))} | {_cell(row.get('prompt_accuracy'))} |")
    print(json.dumps({"denoisers": {k: v.get("prompt_accuracy") for k, v in rows.items()}}))
    return 0


def _cell(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
