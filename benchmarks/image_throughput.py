"""Training-step throughput of the image_tiny diffusion stage, side by side in one process:
fp32 vs bf16 autocast (and channels-last for the U-Net), and the mldm loop vs a bare PyTorch loop
doing the same forward/backward/optimizer work. Ratios, not absolute times, are the result.

    python benchmarks/image_throughput.py [--steps 150] [--out outputs/bench_throughput]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from modalities.image.components import build_conditioner, build_denoiser, build_first_stage, load_images, to_model
from shared.cli.config import build_config
from shared.training.latent_diffusion import Conditions, EncodedLatents, LatentDiffusionStage
from shared.training.loop import Trainer, TrainerSettings
from shared.training.randomness import BatchRandomness
from hydra.utils import instantiate


def make_stage(backbone: str, channels_last: bool, seed: int = 0):
    cfg = build_config("train", ["experiment=image_tiny", f"backbone={backbone}", "data.num_samples=2048"])
    torch.manual_seed(seed)
    images, captions, _ = load_images(instantiate(cfg.data))
    first_stage = build_first_stage(cfg)
    first_stage.estimate_latent_statistics([to_model(images[:512])])
    conditioner = build_conditioner(cfg)
    denoiser = build_denoiser(cfg, first_stage, conditioner)
    if channels_last:
        denoiser = denoiser.to(memory_format=torch.channels_last)
    conditions = Conditions(captions=captions, text_encoder=conditioner)
    stage = LatentDiffusionStage(denoiser, EncodedLatents(first_stage, images, to_model, conditions),
                                 instantiate(cfg.loss), cfg_dropout=cfg.modality.cfg_dropout)
    stage.name = "diffusion"  # what the runner names it from the modality's stage declaration
    return cfg, stage


def mldm_loop(stage, precision: str, steps: int, tmp: Path) -> tuple[float, list[float]]:
    settings = TrainerSettings(max_steps=steps, batch_size=64, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
                               precision=precision, checkpoint_every=0, log_every=10**9)
    trainer = Trainer(stage, settings, seed=0, checkpoint_dir=tmp / "ckpt", log_dir=tmp / "logs",
                      samples_dir=tmp / "samples", device=torch.device("cpu"))
    losses = []
    trainer.train_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(trainer.train_step()["loss"])
    return steps / (time.perf_counter() - start), losses


def bare_loop(stage, precision: str, steps: int) -> float:
    """The same work without the engine: index, sample latents, DSM loss, backward, clip, step."""
    optimizer = torch.optim.AdamW(stage.denoiser.parameters(), lr=1e-3)
    n = stage.num_examples()

    def step(i):
        batch = stage.batch(torch.randint(0, n, (64,)), torch.device("cpu"))
        random = BatchRandomness(0, i)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses, _ = stage.losses(batch, random, i)
        losses["main"].backward()
        torch.nn.utils.clip_grad_norm_(stage.denoiser.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    return steps / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", default="outputs/bench_throughput")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'backbone':<10} {'precision':<16} {'mldm it/s':>9} {'bare it/s':>9} {'overhead':>8} {'loss(last 50)':>13}")
    for backbone, layouts in (("dit_tiny", (False,)), ("unet_tiny", (False, True))):
        for channels_last in layouts:
            for precision in ("fp32", "bf16"):
                _, stage = make_stage(backbone, channels_last)
                mldm_rate, losses = mldm_loop(stage, precision, args.steps, out / "tmp")
                _, stage = make_stage(backbone, channels_last)
                bare_rate = bare_loop(stage, precision, args.steps)
                label = precision + ("+channels_last" if channels_last else "")
                row = {"backbone": backbone, "precision": label, "mldm_it_s": mldm_rate, "bare_it_s": bare_rate,
                       "overhead": bare_rate / mldm_rate, "loss_last50": sum(losses[-50:]) / 50, "losses": losses}
                rows.append(row)
                print(f"{backbone:<10} {label:<16} {mldm_rate:>9.2f} {bare_rate:>9.2f} {row['overhead']:>8.3f} "
                      f"{row['loss_last50']:>13.4f}", flush=True)
    for backbone in ("dit_tiny", "unet_tiny"):
        fp32 = next(r for r in rows if r["backbone"] == backbone and r["precision"] == "fp32")
        for r in rows:
            if r["backbone"] == backbone:
                r["speedup_vs_fp32"] = r["mldm_it_s"] / fp32["mldm_it_s"]
    (out / "results.json").write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1))
    summary = {f"{r['backbone']}/{r['precision']}": round(r["speedup_vs_fp32"], 3) for r in rows}
    print(json.dumps({"speedup_vs_fp32": summary, "overhead": {f"{r['backbone']}/{r['precision']}": round(r["overhead"], 3)
                                                                for r in rows}}))
    return {"rows": rows}


if __name__ == "__main__":
    main()
