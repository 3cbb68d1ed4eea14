"""moving_shapes against its spec (DESIGN.md), and the MP4 round trip through imageio-ffmpeg and decord."""
import numpy as np
import pytest

from modalities.image.data import shape_masks
from modalities.video.data import DIRECTIONS, MovingShapes, draw_motion, longest_video
from modalities.video.files import read_video, write_mp4
from shared.errors import DataError


def test_every_video_follows_the_spec():
    params = draw_motion(seed=3, indices=range(400), size=32, num_frames=8)
    first = params.first
    assert set(first.shape) == {0, 1, 2} and set(first.color) == {0, 1, 2} and set(params.direction) == {0, 1, 2, 3}
    assert (first.r >= 0.12 * 32).all() and (first.r <= 0.20 * 32).all()
    assert (params.speed >= 1.0).all() and (params.speed <= 2.0).all()
    for t in range(8):  # the bounding box keeps the 1-px margin in every frame
        frame = params.frame(t)
        assert (frame.cx - frame.r >= 1 - 1e-9).all() and (frame.cx + frame.r <= 31 + 1e-9).all()
        assert (frame.cy - frame.r >= 1 - 1e-9).all() and (frame.cy + frame.r <= 31 + 1e-9).all()
    moved_x, moved_y = params.frame(7).cx - first.cx, params.frame(7).cy - first.cy
    sign = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for d, name in enumerate(DIRECTIONS):
        rows = params.direction == d
        np.testing.assert_allclose(np.sign(moved_x[rows]), sign[name][0])
        np.testing.assert_allclose(np.sign(moved_y[rows]), sign[name][1])
        np.testing.assert_allclose(np.hypot(moved_x[rows], moved_y[rows]), 7 * params.speed[rows])


def test_frames_are_shapes2d_frames_and_the_shape_never_leaves():
    data = MovingShapes(num_samples=50, seed=1, root="unused")
    videos, params = data.render(range(50)), data.params(range(50))
    assert videos.shape == (50, 8, 32, 32, 3) and videos.dtype == np.uint8
    for t in range(8):
        mask = shape_masks(params.frame(t), 32)
        np.testing.assert_array_equal(videos[:, t].max(axis=-1) > 0, mask)
    assert not videos[:, :, [0, -1]].any() and not videos[:, :, :, [0, -1]].any()  # black border in every frame
    np.testing.assert_array_equal(data.render([7, 3]), videos[[7, 3]])  # a function of (seed, index)


def test_written_once_to_mp4_and_read_back_within_three_per_channel(tmp_path):
    data = MovingShapes(num_samples=12, seed=2, split="val", root=tmp_path)
    assert data.write_missing() == 12 and data.write_missing() == 0
    read = data.materialize()
    assert np.abs(read["videos"].astype(int) - data.render(range(12)).astype(int)).max() <= 3
    files = sorted(data.folder.glob("*.mp4"))
    assert len(files) == 12 and (data.folder / "captions.jsonl").read_text().count("moving") == 12
    item = MovingShapes(num_samples=12, seed=2, split="val", root=tmp_path)[5]
    assert item["video"].shape == (8, 3, 32, 32) and item["caption"] == read["captions"][5]
    assert item["caption"].split(" moving ")[1] == DIRECTIONS[item["direction"]]


def test_too_many_frames_for_the_spec_is_refused():
    assert longest_video(32) == 9
    with pytest.raises(ValueError, match="num_frames=12: at size 32 .* at most 9 frames"):
        MovingShapes(num_frames=12)


def test_a_playable_mp4_and_damaged_files_are_named(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(read_video(write_mp4(tmp_path / "exact.mp4", frames)), frames)
    playable = read_video(write_mp4(tmp_path / "play.mp4", frames, lossless=False))
    assert playable.shape == frames.shape
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((tmp_path / "exact.mp4").read_bytes()[:200])
    with pytest.raises(DataError, match="cut.mp4: cannot decode video"):
        read_video(cut)
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="zero.mp4: empty file"):
        read_video(tmp_path / "zero.mp4")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    with pytest.raises(DataError, match="has 4 frames, frames 0..9 were asked for"):
        read_video(tmp_path / "exact.mp4", indices=range(10))


def _video(path, frames, size=(48, 64)):
    rng = np.random.default_rng(len(str(path)))
    return write_mp4(path, rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8))


def test_a_video_folder_gives_clips_with_captions_and_names_bad_files(tmp_path, capsys):
    from modalities.video.folder import VideoFolder

    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    _video(root / "a.mp4", 20)
    _video(root / "sub" / "b.mp4", 9)
    (root / "a.txt").write_text("a red circle moving left\n")
    data = VideoFolder(root, size=32, num_frames=4, frame_stride=2)  # a clip spans 7 frames
    assert len(data) == 2 + 1 and data.clips == [(0, 0), (0, 7), (1, 0)]
    item = data[1]
    assert item["video"].shape == (4, 3, 32, 32) and item["caption"] == "a red circle moving left"
    assert data[2]["caption"] == ""
    whole = read_video(root / "a.mp4")
    from PIL import Image
    from modalities.image.data import resize_center_crop
    expected = np.asarray(resize_center_crop(Image.fromarray(whole[9]), 32))
    np.testing.assert_array_equal(data.clip(1)[1], expected)  # clip 1 starts at frame 7, every 2nd frame

    (root / "broken.mp4").write_bytes((root / "a.mp4").read_bytes()[:300])
    (root / "empty.webm").write_bytes(b"")
    _video(root / "short.mp4", 3)
    with pytest.raises(DataError, match="broken.mp4: cannot open video"):
        VideoFolder(root, num_frames=4, frame_stride=2)
    kept = VideoFolder(root, num_frames=4, frame_stride=2, skip_bad=True)
    assert kept.num_skipped == 3 and len(kept) == 3
    assert f"skipped 3 bad input(s) of {root}" in capsys.readouterr().err
    alone = tmp_path / "alone"
    alone.mkdir()
    (root / "short.mp4").rename(alone / "short.mp4")
    with pytest.raises(DataError, match=r"short.mp4: 3 frames, fewer than one clip needs \(4 every 2: 7\)"):
        VideoFolder(alone, num_frames=4, frame_stride=2)
