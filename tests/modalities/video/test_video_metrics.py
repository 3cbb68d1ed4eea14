"""The moving_shapes judge: the data passes, and each way a video can be wrong is caught by its own metric."""
import numpy as np
import pytest

from modalities.video.data import MovingShapes, caption_for
from modalities.video.metrics import evaluate_videos, parse_prompt


@pytest.fixture(scope="module")
def data():
    shapes = MovingShapes(num_samples=200, seed=6, split="test", root="unused")
    params = shapes.params(range(200))
    prompts = [caption_for(int(s), int(c), int(d)) for s, c, d in
               zip(params.first.shape, params.first.color, params.direction)]
    return shapes.render(range(200)), prompts


def test_the_data_itself_passes(data):
    videos, prompts = data
    metrics = evaluate_videos(videos, prompts)
    assert metrics["n"] == 200 and metrics["frames"] == 8
    assert metrics["valid_frame_rate"] == 1.0, metrics  # every frame of the spec's data is a valid shape
    for key in ("consistency", "prompt_accuracy"):  # a 4-px disk can rasterise as a cut-cornered square
        assert metrics[key] >= 0.995, (key, metrics)  # (2,000 videos: 0.9995)
    assert metrics["motion"] == 1.0 and metrics["direction_accuracy"] == 1.0 and metrics["flicker"] == 0.0


def test_wrong_direction_no_motion_and_jumbled_frames_are_caught(data):
    videos, prompts = data
    good = evaluate_videos(videos, prompts)
    backwards = evaluate_videos(videos[:, ::-1], prompts)
    assert backwards["direction_accuracy"] == 0.0 and backwards["prompt_accuracy"] == 0.0
    assert backwards["appearance_accuracy"] == good["appearance_accuracy"] and backwards["motion"] == 1.0
    assert evaluate_videos(np.repeat(videos[:, :1], 8, axis=1), prompts)["motion"] == 0.0
    jumbled = videos[:, [0, 5, 2, 7, 1, 3, 6, 4]]
    assert evaluate_videos(jumbled, prompts)["motion"] < 0.05


def test_a_changing_look_breaks_consistency_and_a_pulsing_colour_is_flicker(data):
    videos, prompts = data
    recoloured = videos.copy()
    recoloured[:, 4:] = recoloured[:, 4:, :, :, [1, 2, 0]]  # the colour changes halfway
    metrics = evaluate_videos(recoloured, prompts)
    assert metrics["valid_rate"] >= 0.98 and metrics["consistency"] == 0.0 and metrics["prompt_accuracy"] == 0.0
    pulsing = videos.astype(np.float64)
    pulsing[:, 1::2] *= 0.85                                 # every other frame 15% darker: still the same colour
    metrics = evaluate_videos(pulsing.round().astype(np.uint8), prompts)
    assert metrics["consistency"] >= 0.9 and metrics["flicker"] > 15


def test_float_channel_first_videos_and_prompts(data):
    videos, prompts = data
    floats = videos[:20].transpose(0, 1, 4, 2, 3).astype(np.float32) / 127.5 - 1
    assert evaluate_videos(floats, prompts[:20])["prompt_accuracy"] == evaluate_videos(videos[:20], prompts[:20])[
        "prompt_accuracy"]
    assert parse_prompt("A Blue triangle moving UP") == (2, 2, 2)
    with pytest.raises(ValueError, match="not a moving_shapes prompt"):
        parse_prompt("a blue triangle")
    with pytest.raises(ValueError, match="3 prompts for 20 videos"):
        evaluate_videos(videos[:20], prompts[:3])
