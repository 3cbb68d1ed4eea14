"""The video sample directory: a playable MP4 and a GIF per video, the exact frames in samples.npz, the index,
a grid; read back for the judge."""

import numpy as np
import pytest
from PIL import Image, ImageSequence

from modalities.video.data import MovingShapes, caption_for
from modalities.video.export import export_videos, load_video_samples
from modalities.video.files import read_video
from modalities.video.metrics import evaluate_videos
from shared.errors import DataError
from shared.io.sample_dir import MANIFEST_FILE, read_index


def gif_frames(path):
    with Image.open(path) as gif:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])


def test_export_round_trip_and_the_judge_reads_it_back(tmp_path):
    data = MovingShapes(num_samples=5, seed=8, root="unused")
    videos, params = data.render(range(5)), data.params(range(5))
    prompts = [caption_for(int(s), int(c), int(d)) for s, c, d in
               zip(params.first.shape, params.first.color, params.direction)]
    out = export_videos(tmp_path / "s", videos, prompts=prompts, seeds=range(5))
    names = sorted(p.name for p in out.iterdir())
    assert names == [MANIFEST_FILE] + [f"00000{i}.{ext}" for i in range(5) for ext in ("gif", "mp4")] + [
        "grid.gif", "samples.jsonl", "samples.npz"]
    assert read_index(out)[2] == {"file": "000002.mp4", "prompt": prompts[2], "seed": 2}
    assert np.array_equal(gif_frames(out / "000003.gif"), videos[3])                      # exact: two colours
    assert np.abs(read_video(out / "000003.mp4").astype(int) - videos[3]).mean() < 3      # 4:2:0, playable
    assert gif_frames(out / "grid.gif").shape[0] == 8
    loaded = load_video_samples(out)
    assert np.array_equal(loaded["videos"], videos) and loaded["prompts"] == prompts
    assert evaluate_videos(loaded["videos"], loaded["prompts"])["prompt_accuracy"] == 1.0


def test_float_videos_and_bad_directories(tmp_path):
    floats = np.zeros((2, 3, 3, 16, 16), np.float32) - 1                        # [N, T, 3, H, W] in [-1, 1]
    out = export_videos(tmp_path / "f", floats)
    assert load_video_samples(out)["videos"].shape == (2, 3, 16, 16, 3) and load_video_samples(out)["prompts"] is None
    with pytest.raises(ValueError, match="1 prompts for 2 videos"):
        export_videos(tmp_path / "g", floats, prompts=["a"])
    (out / "samples.jsonl").write_text('{"file": "000000.mp4"}\n')
    with pytest.raises(DataError, match="1 index lines but 2 videos"):
        load_video_samples(out)
