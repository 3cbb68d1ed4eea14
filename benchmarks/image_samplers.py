"""Sampler quality vs NFE on a trained image model (default: the `make demo` run), judged by the
shapes2d metric. Every row samples the same prompts from the same seeds.

    python benchmarks/image_samplers.py [--run outputs/demo/run] [--num-samples 180] [--out outputs/bench_samplers]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from modalities.image.metrics import evaluate_samples
from modalities.image.pipeline import ImagePipeline, generate

ROWS = [("ddpm", 1000, {}), ("ddim", 10, {}), ("ddim", 20, {}), ("ddim", 50, {}), ("dpmpp_2m", 10, {}),
        ("dpmpp_2m", 20, {}), ("dpmpp_2m", 50, {}), ("heun", 10, {}), ("rk45", 20, {})]
TARGETS = {"ddpm": "sample_ddpm", "ddim": "sample_ddim", "dpmpp_2m": "sample_dpmpp_2m", "heun": "sample_heun"}


def sampler_config(name: str) -> dict:
    if name == "rk45":
        return {"_target_": "shared.diffusion.adaptive.sample_rk45", "_partial_": True}
    return {"_target_": f"shared.diffusion.samplers.{TARGETS[name]}", "_partial_": True}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="outputs/demo/run")
    parser.add_argument("--num-samples", type=int, default=180)
    parser.add_argument("--out", default="outputs/bench_samplers")
    args = parser.parse_args(argv)
    run = Path(args.run)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.steps = 20
    pipeline = ImagePipeline(cfg, run, torch.device("cpu"))
    prompts = pipeline.prompts(args.num_samples, None)
    rows = []
    print(f"{'sampler':<10} {'steps':>5} {'NFE':>5} {'valid':>7} {'prompt':>7} {'seconds':>8}")
    for name, steps, extra in ROWS:
        cfg.sampler = {**sampler_config(name), **extra}
        calls = {"n": 0}
        denoiser = pipeline.denoiser

        def counted(x, t, cond=None, _inner=denoiser):
            calls["n"] += 1
            return _inner(x, t, cond)

        counted.schedule = denoiser.schedule
        start = time.perf_counter()
        images = generate(cfg, counted, pipeline.first_stage, pipeline.conditioner, prompts, steps, seed=0,
                          device=torch.device("cpu"))
        seconds = time.perf_counter() - start
        metrics = evaluate_samples(images, prompts=prompts)
        nfe = calls["n"] // (2 * ((len(prompts) + 255) // 256))  # CFG: two calls per evaluation and batch
        row = {"sampler": name, "steps": steps, "nfe": nfe, "valid_rate": metrics["valid_rate"],
               "prompt_accuracy": metrics["prompt_accuracy"], "seconds": round(seconds, 2)}
        rows.append(row)
        print(f"{name:<10} {steps:>5} {nfe:>5} {row['valid_rate']:>7.3f} {row['prompt_accuracy']:>7.3f} {seconds:>8.1f}",
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"run": str(run), "num_samples": args.num_samples, "guidance_scale": cfg.guidance.scale, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"rows": len(rows), "out": str(out)}))
    return result


if __name__ == "__main__":
    main()
