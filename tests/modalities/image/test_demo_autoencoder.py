"""Regression guard for `make demo`'s first stage: a short, fixed-seed training of image_tiny's autoencoder
(the preset's recipe, fewer steps) must reconstruct held-out shapes2d images that pass the shapes2d judge.

Every demo sample is decoded by this autoencoder, so its reconstructions bound what the demo can reach;
a core change that blurs them (loss, posterior, optimiser, schedule, precision) fails here in 2-2.5 minutes
rather than in the 11-minute demo. fp32, so the bound holds on CPUs with and without native bf16.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("image_reconstructions", REPO / "benchmarks" / "image_reconstructions.py")
image_reconstructions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image_reconstructions)

STEPS = 600          # of the preset's 1,800 (the LR schedule is fitted to STEPS)
PASS_RATE = 0.75     # measured 0.85-0.88 (AVX512 and AVX2 kernels, 1 or 2 threads); the full preset reaches
                     # 0.99. The old recipe's blurry plateau judged 0.34, a blurred decoder ~0 (test_metrics.py).


def test_the_demo_autoencoder_reconstructs_shapes_the_judge_accepts(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "shared.cli", "train", "experiment=image_tiny", f"run_dir={run}",
                          "device=cpu", "seed=0", "trainer.precision=fp32", "stages.diffusion=null",
                          f"stages.autoencoder.max_steps={STEPS}", "stages.autoencoder.checkpoint_every=0"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = image_reconstructions.reconstruction_metrics(run, num_samples=512)
    assert metrics["n"] == 512
    assert metrics["valid_rate"] >= PASS_RATE and metrics["prompt_accuracy"] >= PASS_RATE, metrics
