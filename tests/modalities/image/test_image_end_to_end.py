"""The image modality through the CLI: train both stages (few steps), sample, evaluate — the contract."""
import csv
import json

import numpy as np
import pytest

TINY = ["experiment=image_tiny", "data.num_samples=256", "device=cpu", "trainer.log_every=5",
        "stages.autoencoder.max_steps=30", "stages.autoencoder.batch_size=16", "stages.autoencoder.checkpoint_every=0",
        "stages.diffusion.max_steps=10", "stages.diffusion.batch_size=16", "stages.diffusion.checkpoint_every=0",
        "backbone.width=64", "backbone.depth=2", "trainer.sample_every=10", "trainer.sample_count=9",
        "trainer.sample_steps=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mldm_process):
    run = tmp_path_factory.mktemp("image") / "run"
    out = mldm_process("train", *TINY, f"run_dir={run}")
    assert out.returncode == 0, out.stderr[-4000:]
    return run


def test_training_writes_the_run_directory_and_the_autoencoder_learns(run_dir):
    assert (run_dir / "config.yaml").exists()
    for stage in ("autoencoder", "diffusion"):
        checkpoints = sorted((run_dir / "checkpoints" / stage).glob("step_*.json"))
        assert checkpoints and json.loads(checkpoints[-1].read_text())["complete"]
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    ae = [float(r["loss"]) for r in rows if r["stage"] == "autoencoder"]
    assert ae[-1] < 0.7 * ae[0], f"autoencoder loss did not fall: {ae}"
    assert any((run_dir / "logs" / "tensorboard").rglob("events.out.tfevents.*"))
    preview = run_dir / "samples" / "diffusion" / "step_00000010"
    assert (preview / "grid.png").exists() and len(list(preview.glob("0*.png"))) == 9


def test_sample_writes_the_sample_directory_contract(run_dir, tmp_path, mldm_here):
    out = mldm_here("sample", f"run_dir={run_dir}", "num_samples=5", "steps=3", f"out_dir={tmp_path}",
               "prompt=a red circle", "guidance_scale=2.0")
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(r["prompt"] == "a red circle" and "seed" in r for r in records)
    assert all((tmp_path / r["file"]).exists() for r in records) and (tmp_path / "grid.png").exists()
    arrays = np.load(tmp_path / "samples.npz")
    assert arrays["images"].shape == (5, 32, 32, 3) and arrays["images"].dtype == np.uint8


def test_evaluate_prints_the_metric_line_for_samples_and_for_data(run_dir, tmp_path, mldm_here):
    out = mldm_here("evaluate", f"run_dir={run_dir}", "num_samples=9", "steps=2", f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"valid_rate", "prompt_accuracy", "n"} <= set(metrics) and metrics["n"] == 9
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 9
    out = mldm_here("evaluate", "experiment=image_tiny", "source=data", "split=test", "num_samples=300",
               f"out_dir={tmp_path / 'data'}")
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 300 and metrics["valid_rate"] >= 0.97 and metrics["prompt_accuracy"] >= 0.97


def test_label_conditioning_with_a_vq_autoencoder_trains_and_samples(tmp_path, mldm_here, mldm_process):
    run = tmp_path / "run"
    out = mldm_process("train", *TINY, "modality=image_labels", "autoencoder=vq_f4_tiny", f"run_dir={run}")
    assert out.returncode == 0, out.stderr[-4000:]
    out = mldm_here("sample", f"run_dir={run}", "num_samples=9", "steps=2", f"out_dir={tmp_path / 's'}")
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in records) == [str(i) for i in range(9)]  # one per class label


def test_an_image_folder_run_samples_its_own_captions_without_a_prompt(tmp_path, mldm_here, mldm_process):
    """Sampling without prompt= draws the training captions; an image folder has no num_samples or split."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text("a red circle" if i % 2 else "a blue square")
    run = tmp_path / "run"
    tiny = [arg for arg in TINY if not arg.startswith("data.")]
    out = mldm_process("train", *tiny, "data=image_folder", f"data.root={folder}", "stages.autoencoder.max_steps=2",
                       "stages.diffusion.max_steps=2", "trainer.sample_every=0", f"run_dir={run}")
    assert out.returncode == 0, out.stderr[-4000:]
    out = mldm_here("sample", f"run_dir={run}", "num_samples=4", "steps=2", f"out_dir={tmp_path / 's'}")
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a blue square", "a red circle"] * 2
    out = mldm_here("evaluate", f"run_dir={run}", "source=data", "num_samples=5", f"out_dir={tmp_path / 'd'}")
    assert out.returncode == 0, out.stderr[-4000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["n"] == 5


def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def test_img2img_and_inpainting_from_the_command_line(run_dir, tmp_path, mldm_here):
    """init= with a small strength stays near the image whatever the seed; a mask keeping everything returns the
    init's own latent (so every seed gives the same image); options a modality lacks, or half-given, are errors."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = (255, 0, 0)
    init = _write_png(tmp_path / "init.png", image)
    keep_all = _write_png(tmp_path / "keep.png", np.zeros((32, 32), np.uint8))

    def images(*args, seed=0):
        out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
        done = mldm_here("sample", f"run_dir={run_dir}", "num_samples=2", "steps=4", f"seed={seed}", f"out_dir={out}",
                    "prompt=a red square", *args)
        assert done.returncode == 0, done.stderr[-3000:]
        return np.load(out / "samples.npz")["images"].astype(np.float64)

    kept = [images(f"init={init}", f"mask={keep_all}", seed=seed) for seed in (0, 1)]
    assert np.array_equal(kept[0], kept[1])
    near = [images(f"init={init}", "strength=0.05", seed=seed) for seed in (0, 1)]
    free = [images(seed=seed) for seed in (0, 1)]
    assert np.abs(near[0] - near[1]).mean() < 0.25 * np.abs(free[0] - free[1]).mean()
    for args, message in ((["mask=x.png"], "give the image with init="), (["partial=x.ply"], "does not take partial="),
                          ([f"init={tmp_path / 'nope.png'}", "strength=0.5"], "nope.png: no such image file"),
                          ([f"init={init}"], "give strength=S below 1")):
        done = mldm_here("sample", f"run_dir={run_dir}", "num_samples=1", "steps=2", f"out_dir={tmp_path / 'err'}", *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr[-2000:])
