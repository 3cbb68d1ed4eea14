"""The video modality through the CLI: video_tiny's four stages for two steps each, then text-to-video with a
preview, image-to-video from a PNG, a video longer than the model's window, evaluation of samples and data."""
import json

import numpy as np
import pytest
from PIL import Image

from modalities.video.data import MovingShapes

STAGES = ("autoencoder", "image_diffusion", "video_diffusion", "decoder")
TINY = ["experiment=video_tiny", "data.num_samples=8", "device=cpu", "trainer.precision=fp32", "trainer.log_every=1",
        "backbone.width=32", "backbone.depth=1", "modality.temporal.heads=2",
        "modality.video_decoder.adversarial.discriminator.channels=8",
        "trainer.sample_every=2", "trainer.sample_count=2", "trainer.sample_steps=2",
        *[f"stages.{stage}.{key}={value}" for stage in STAGES
          for key, value in (("max_steps", 2), ("batch_size", 4), ("checkpoint_every", 0), ("warmup_steps", 0))]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mldm_process):
    run = tmp_path_factory.mktemp("video") / "run"
    out = mldm_process("train", *TINY, f"run_dir={run}")
    assert out.returncode == 0, out.stderr[-4000:]
    return run


def test_every_stage_trains_and_the_video_stage_previews_videos(run_dir):
    for stage in STAGES:
        final = run_dir / "checkpoints" / stage / "step_00000002.json"
        assert json.loads(final.read_text())["complete"], stage
    preview = run_dir / "samples" / "video_diffusion" / "step_00000002"
    assert (preview / "grid.gif").exists() and len(list(preview.glob("0*.mp4"))) == 2


def test_image_to_video_starts_from_the_given_frame_and_longer_videos_extend(run_dir, tmp_path, mldm_here):
    frame = MovingShapes(num_samples=1, split="val", root=tmp_path / "data").render([0])[0, 0]
    Image.fromarray(frame).save(tmp_path / "first.png")
    out = mldm_here("sample", f"run_dir={run_dir}", "num_samples=2", "steps=2", "prompt=a red circle moving left",
                    f"first_frame={tmp_path / 'first.png'}", "num_frames=12", "context_frames=2",
                    f"out_dir={tmp_path / 'out'}")
    assert out.returncode == 0, out.stderr[-4000:]
    with np.load(tmp_path / "out" / "samples.npz") as arrays:
        videos = arrays["videos"]
    assert videos.shape == (2, 12, 32, 32, 3) and videos.dtype == np.uint8
    records = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a red circle moving left"] * 2
    assert all((tmp_path / "out" / r["file"]).is_file() and (tmp_path / "out" / r["file"]).suffix == ".mp4"
               for r in records)
    # both start from the one given frame (its latent is kept; the video decoder mixes in neighbouring frames)
    start, end = (np.abs(videos[0, t].astype(float) - videos[1, t]).mean() for t in (0, -1))
    assert start < 0.25 * end, (start, end)


def test_options_a_video_model_cannot_honour_are_refused(run_dir, tmp_path, mldm_here):
    out = mldm_here("sample", f"run_dir={run_dir}", "num_samples=1", "steps=2", "init=x.png",
                    f"out_dir={tmp_path / 'a'}")
    assert out.returncode == 2 and "does not take init=" in out.stderr
    out = mldm_here("sample", f"run_dir={run_dir}", "num_samples=1", "steps=2", "num_frames=12", "context_frames=8",
                    f"out_dir={tmp_path / 'b'}")
    assert out.returncode == 2 and "context_frames in [1, 7]" in out.stderr, out.stderr[-2000:]


def test_evaluate_judges_samples_and_the_data_itself(run_dir, tmp_path, mldm_here):
    out = mldm_here("evaluate", f"run_dir={run_dir}", "num_samples=4", "steps=2", f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 4 and metrics["frames"] == 8
    assert {"valid_rate", "consistency", "motion", "prompt_accuracy", "direction_accuracy"} <= set(metrics)
    out = mldm_here("evaluate", f"run_dir={run_dir}", "source=data", "num_samples=8", f"out_dir={tmp_path / 'data'}")
    assert out.returncode == 0, out.stderr[-4000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["prompt_accuracy"] >= 0.85 and data["motion"] >= 0.85  # the judge recognises the data it judges


def test_a_video_run_takes_another_runs_image_stages_with_init_from(run_dir, tmp_path, mldm_here, mldm_process):
    video_only = [arg for arg in TINY if not arg.startswith(("stages.autoencoder.", "stages.image_diffusion."))]
    out = mldm_process("train", *video_only, "stages.decoder=null", f"init_from={run_dir}",
                       f"run_dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-4000:]
    for stage in ("autoencoder", "image_diffusion"):
        assert f"{stage}: taken from {run_dir / 'checkpoints' / stage}" in out.stderr
        copied = tmp_path / "run" / "checkpoints" / stage / "step_00000002.safetensors"
        assert copied.read_bytes() == (run_dir / "checkpoints" / stage / copied.name).read_bytes()
    assert (tmp_path / "run" / "checkpoints" / "video_diffusion" / "step_00000002.json").is_file()
    out = mldm_here("train", *video_only, "backbone.depth=2", f"init_from={run_dir}", f"run_dir={tmp_path / 'other'}")
    assert out.returncode == 2 and "its backbone" in out.stderr and "differs from this run's" in out.stderr


def test_evaluate_reports_fvd_with_a_local_feature_network(run_dir, tmp_path, mldm_here):
    import torch

    class Features(torch.nn.Module):  # a tiny random video network with the I3D detector's call signature
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 8, 3, stride=2)

        def forward(self, videos, rescale: bool = False, resize: bool = False, return_features: bool = True):
            return self.conv(videos).mean((2, 3, 4))

    torch.manual_seed(0)
    torch.jit.script(Features()).save(str(tmp_path / "features.pt"))
    out = mldm_here("evaluate", f"run_dir={run_dir}", "num_samples=4", "steps=2", f"out_dir={tmp_path / 'out'}",
                    f"modality.fvd.network={tmp_path / 'features.pt'}")
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert metrics["fvd"] > 0 and np.isfinite(metrics["fvd"])
