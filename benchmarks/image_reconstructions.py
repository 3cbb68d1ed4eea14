"""The shapes2d judge on an image run's autoencoder reconstructions of held-out data (split=val): the
ceiling its diffusion samples can reach, since every sample is decoded by the same decoder.

    python benchmarks/image_reconstructions.py --run outputs/demo/run [--num-samples 512] [--split val]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from modalities.image.components import build_first_stage, load_images, to_model
from modalities.image.metrics import evaluate_reconstructions
from shared.training.checkpoint import load_stage_weights

REPO = Path(__file__).resolve().parents[1]


def reconstruction_metrics(run: Path, num_samples: int = 512, split: str = "val") -> dict:
    cfg = OmegaConf.load(run / "config.yaml")
    first_stage = build_first_stage(cfg)
    if first_stage is None:
        raise ValueError(f"{run}/config.yaml: the run has no autoencoder (a pixel-space run)")
    checkpoint = load_stage_weights(run, "autoencoder", {"autoencoder": first_stage}, prefer_ema=False)
    images, captions, _ = load_images(instantiate(cfg.data, split=split, num_samples=num_samples))
    metrics = evaluate_reconstructions(first_stage.eval(), to_model(images), captions)
    keep = ("n", "valid_rate", "prompt_accuracy", "rejected_by")
    return {"checkpoint": str(checkpoint), "split": split, **{k: metrics[k] for k in keep}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "outputs" / "demo" / "run")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    args = parser.parse_args(argv)
    print(json.dumps(reconstruction_metrics(args.run, args.num_samples, args.split)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
