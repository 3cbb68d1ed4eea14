"""The primitive_views judge: right on held-out renders, wrong prompts score zero, junk is invalid."""
import numpy as np
import pytest
import torch

from modalities.text_to_3d.data import PrimitiveViews
from modalities.text_to_3d.metrics import evaluate_views, judge_views, parse_prompt

BANK = 1500   # the default bank is 6,000 renders; a smaller one keeps the test fast


@pytest.fixture(scope="module")
def held_out():
    return PrimitiveViews(num_samples=150, split="val", cache_dir=None).arrays()


def test_held_out_renders_are_judged_right(held_out):
    images, captions, labels = held_out
    metrics = evaluate_views(images, prompts=captions, bank_size=BANK)
    assert metrics["valid_rate"] == 1.0 and metrics["color_accuracy"] == 1.0
    assert metrics["shape_accuracy"] >= 0.95
    assert evaluate_views(images, labels=labels, bank_size=BANK)["prompt_accuracy"] == metrics["prompt_accuracy"]
    assert metrics["class_entropy"] > 0.95


def test_wrong_prompts_score_zero(held_out):
    images, captions, labels = held_out
    swapped_color = [c.replace("red", "TMP").replace("green", "red").replace("TMP", "green") for c in captions]
    wrong = [i for i, (a, b) in enumerate(zip(captions, swapped_color)) if a != b]
    metrics = evaluate_views(images[wrong], prompts=[swapped_color[i] for i in wrong], bank_size=BANK)
    assert metrics["color_accuracy"] == 0.0 and metrics["prompt_accuracy"] == 0.0
    shifted = [f"a {c.split()[1]} {['sphere', 'box', 'cylinder', 'cone', 'torus'][(int(y) // 3 + 1) % 5]}"
               for c, y in zip(captions, labels)]
    assert evaluate_views(images, prompts=shifted, bank_size=BANK)["shape_accuracy"] <= 0.05


def test_junk_is_invalid():
    rng = np.random.default_rng(0)
    blank = np.zeros((1, 3, 32, 32), np.uint8)
    noise = rng.integers(0, 256, (1, 3, 32, 32)).astype(np.uint8)
    grey = np.full((1, 3, 32, 32), 200, np.uint8)
    stripes = np.zeros((1, 3, 32, 32), np.uint8)
    stripes[:, 0, ::4] = 220                                   # red, but no primitive looks like this
    verdict = judge_views(torch.from_numpy(np.concatenate([blank, noise, grey, stripes])), bank_size=BANK)
    assert not verdict["valid"].any() and (verdict["kind"] == -1).all()


def test_prompts_parse_with_and_without_view_suffix():
    assert parse_prompt("a red torus, side view") == (0, 4)
    assert parse_prompt("A Blue Cone") == (2, 3)
    with pytest.raises(ValueError, match="primitive_views prompt"):
        parse_prompt("a red circle")
