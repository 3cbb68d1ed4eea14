"""The contract every modality preset honours through the CLI, one row per preset: every stage the preset
declares trains (two steps), `mldm sample` writes the sample directory, `mldm evaluate` judges it, and a
finished run resumes to nothing. Stage names come from the preset itself; adding a modality adds a row."""
import json
import re
import shutil

import numpy as np
from PIL import Image
import pytest

from shared.cli.config import build_config
from shared.io.sample_dir import read_index

COMMON = ["device=cpu", "trainer.precision=fp32", "trainer.log_every=1", "trainer.sample_every=0"]
# (preset, overrides that make its models and data tiny)
PRESETS = {
    "image": ["experiment=image_tiny", "data.num_samples=64", "backbone.width=32", "backbone.depth=1"],
    "pointcloud": ["experiment=pointcloud_tiny", "data.num_samples=16", "data.num_points=256",
                   "autoencoder.num_latent_points=16", "autoencoder.width=16", "autoencoder.global_dim=8",
                   "autoencoder.k=8", "autoencoder.decoder_depth=1", "backbone.global_prior.width=16",
                   "backbone.global_prior.depth=1", "backbone.point_prior.width=16", "backbone.point_prior.depth=1"],
    "sdf": ["experiment=sdf_tiny", "data.num_samples=16", "data.num_points=256", "data.sdf_near=256",
            "data.sdf_uniform=128", "autoencoder.latent_dim=8", "autoencoder.num_centres=16", "autoencoder.k=8",
            "autoencoder.width=16", "autoencoder.decoder_width=16", "autoencoder.decoder_depth=1",
            "modality.autoencoder_training.queries=64", "backbone.width=16", "backbone.depth=1",
            "modality.mesh.resolution=16"],
    "text3d_prior": ["experiment=text3d_prior_tiny", "data.num_samples=16", "data.cache_dir=null",
                     "backbone.width=32", "backbone.depth=1"],
    "video": ["experiment=video_tiny", "data.num_samples=8", "backbone.width=32",
              "backbone.depth=1", "modality.temporal.heads=2", "modality.video_decoder.adversarial.discriminator.channels=8"],
    "molecule": ["experiment=molecule_qm9_tiny", "autoencoder.hidden=16", "autoencoder.decoder_blocks=1",
                 "backbone.hidden=16", "backbone.num_blocks=1"],
}


def two_steps_per_stage(preset: list[str]) -> tuple[list[str], list[str]]:
    """The preset's stage names (from its own config) and overrides that train each for two steps."""
    stages = [name for name, node in build_config("train", preset).stages.items() if node is not None]
    overrides = [f"stages.{stage}.{key}={value}" for stage in stages
                 for key, value in (("max_steps", 2), ("batch_size", 4), ("checkpoint_every", 0), ("warmup_steps", 0))]
    return stages, overrides


@pytest.fixture(scope="module", params=sorted(PRESETS))
def trained(request, tmp_path_factory, mldm_process):
    preset = PRESETS[request.param]
    stages, steps = two_steps_per_stage(preset)
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    done = mldm_process("train", *preset, *COMMON, *steps, f"run_dir={run_dir}")
    assert done.returncode == 0, done.stderr[-4000:]
    return request.param, stages, run_dir


def test_every_declared_stage_trains_to_a_complete_checkpoint(trained):
    _, stages, run_dir = trained
    for stage in stages:
        final = run_dir / "checkpoints" / stage / "step_00000002.json"
        assert final.exists() and json.loads(final.read_text())["complete"], f"stage {stage}"


@pytest.fixture(scope="module")
def sampled(trained, tmp_path_factory, mldm_process):
    """Three samples of seed 7 drawn in one batch, with sample 0's chain (one CLI call serves three tests)."""
    _, _, run_dir = trained
    out = tmp_path_factory.mktemp("samples")
    done = mldm_process("sample", f"run_dir={run_dir}", "num_samples=3", "steps=3", "seed=7", "batch_size=3",
                        "export.chain=true", f"out_dir={out}")
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_sample_writes_the_sample_directory_and_evaluate_judges_it(trained, sampled, mldm_here):
    name, _, run_dir = trained
    records = read_index(sampled)
    assert len(records) == 3 and all(r["file"] is None or (sampled / r["file"]).is_file() for r in records)
    with np.load(sampled / "samples.npz") as arrays:
        assert arrays.files, f"{name}: samples.npz holds no arrays"
    done = mldm_here("evaluate", f"run_dir={run_dir}", f"samples_dir={sampled}")
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 3 and json.loads((sampled / "metrics.json").read_text())["n"] == 3


def test_a_finished_run_resumes_to_nothing(trained, mldm_process):
    _, stages, run_dir = trained
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*")}
    done = mldm_process("train", f"run_dir={run_dir}", "resume=true")
    assert done.returncode == 0, done.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*")} == before


def test_sample_i_depends_on_seed_and_i_alone_not_on_the_batch_size(trained, sampled, tmp_path, mldm_here):
    """The same seed drawn in one batch of 3 and in batches of 2 + 1 gives the same samples."""
    name, _, run_dir = trained
    done = mldm_here("sample", f"run_dir={run_dir}", "num_samples=3", "steps=3", "seed=7", "batch_size=2",
                     f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(sampled / "samples.npz") as one, np.load(tmp_path / "samples.npz") as two:
        one_batch, two_batches = dict(one), dict(two)
    assert one_batch.keys() == two_batches.keys()
    for key, value in one_batch.items():
        if np.issubdtype(value.dtype, np.floating):
            # batched matmuls round differently, and a two-step model amplifies it (its molecule latents reach
            # 1e4 through 50 refinement steps); a seeding fault moves samples by their whole scale. The exact
            # property: tests/shared/test_generate.py, with a closed-form denoiser.
            scale = max(1.0, float(np.abs(value).max()))
            np.testing.assert_allclose(two_batches[key], value, rtol=0, atol=1e-2 * scale, err_msg=f"{name}: {key}")
        elif value.dtype == np.uint8:  # pixels: the same float rounding can tip a value across a level
            difference = np.abs(two_batches[key].astype(np.int16) - value.astype(np.int16))
            assert difference.max() <= 1 and (difference > 0).mean() < 0.01, f"{name}: {key}"
        else:
            np.testing.assert_array_equal(two_batches[key], value, err_msg=f"{name}: {key}")


def test_export_chain_writes_a_gif_of_sample_0s_denoising_trajectory(trained, sampled):
    name = trained[0]
    with Image.open(sampled / "chain.gif") as gif:
        assert gif.n_frames >= 3, f"{name}: one frame per sampler step (3 steps), got {gif.n_frames}"
        first = np.asarray(gif.convert("RGB"))
        gif.seek(gif.n_frames - 1)
        assert not np.array_equal(first, np.asarray(gif.convert("RGB"))), f"{name}: the chain does not move"


def test_evaluate_nll_reports_bits_per_dim_as_the_sum_of_its_parts(trained, tmp_path, mldm_here):
    name, _, run_dir = trained
    done = mldm_here("evaluate", f"run_dir={run_dir}", "nll=true", "num_samples=4", "nll_steps=5", "split=train",
                     f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    parts = sum(metrics[f"{part}_bpd"] for part in ("reconstruction", "diffusion", "prior"))
    assert np.isfinite(metrics["bits_per_dim"]) and metrics["bits_per_dim"] == pytest.approx(parts, rel=1e-9)
    assert metrics["nll_items"] == 4 and metrics["nll_steps"] == 5, name
    assert metrics["prior_bpd"] >= 0.0 and metrics["diffusion_bpd"] >= 0.0  # a KL and a sum of squares


def test_damaged_checkpoints_users_files_and_diverged_sampling_lose_nothing(trained, tmp_path, mldm_here):
    """A damaged newest checkpoint (truncated weights; weights without their JSON) is named and the newest
    sound one used; an out_dir holding a user's file is refused untouched; a guidance scale that makes
    sampling diverge is named and nothing is written."""
    name, stages, trained_dir = trained
    run_dir = tmp_path / "run"
    shutil.copytree(trained_dir, run_dir)
    last = run_dir / "checkpoints" / stages[-1]
    for step, damage in ((3, "truncate"), (4, "drop_json")):
        for suffix in (".json", ".safetensors"):
            shutil.copy(last / f"step_00000002{suffix}", last / f"step_{step:08d}{suffix}")
        weights = last / f"step_{step:08d}.safetensors"
        if damage == "truncate":
            weights.write_bytes(weights.read_bytes()[:-100])
        else:
            (last / f"step_{step:08d}.json").unlink()
    done = mldm_here("sample", f"run_dir={run_dir}", "num_samples=1", "steps=2", f"out_dir={tmp_path / 'a'}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"damaged checkpoint of step 4: weights without their .json.*\(and 1 more\); using step 2 "
                     r"instead", done.stderr), f"{name}: {done.stderr[-2000:]}"

    users = tmp_path / "mine"
    users.mkdir()
    (users / "photo.png").write_bytes(b"a user's file")
    done = mldm_here("sample", f"run_dir={run_dir}", "num_samples=1", "steps=2", f"out_dir={users}")
    assert done.returncode == 2 and "holds files mldm did not write (photo.png)" in done.stderr, done.stderr[-2000:]
    assert [p.name for p in users.iterdir()] == ["photo.png"]

    if build_config("sample", [f"run_dir={run_dir}"]).guidance.get("scale") is not None:
        done = mldm_here("sample", f"run_dir={run_dir}", "num_samples=2", "steps=2", "guidance_scale=1e30",
                         f"out_dir={tmp_path / 'b'}")
        assert done.returncode == 2 and "Likely cause: guidance_scale=1e+30" in done.stderr, done.stderr[-2000:]
        assert not (tmp_path / "b").exists()
