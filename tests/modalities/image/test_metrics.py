"""The shapes2d judge: accepts the generator's images, rejects what the spec rules out."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from modalities.image.data import (COLORS, SHAPES, ShapeParams, Shapes2D, caption_for_label, render_shapes,
                                   uint8_to_float)
from modalities.image.metrics import evaluate_reconstructions, evaluate_samples, judge, judge_image, parse_prompt
from shared.first_stage.autoencoder import DiagonalGaussian, FirstStage

N = 2400


@pytest.fixture(scope="module")
def generated():
    images, labels = Shapes2D(N, seed=11).materialize()
    return images, labels.numpy()


def _params(shapes, colors, r, cx, cy, rgb):
    return ShapeParams(np.array(shapes), np.array(colors), np.array(r, float), np.array(cx, float),
                       np.array(cy, float), np.array(rgb, np.uint8))


def test_generator_images_accepted_and_classified(generated):
    images, labels = generated
    result = judge(images)
    correct = result.valid & (result.color == labels % 3) & (result.shape == labels // 3)
    assert result.valid.mean() >= 0.97 and correct.mean() >= 0.97
    assert correct.mean() == 1.0                       # measured: every generator image passes
    # The same judgement from float [-1, 1] and channel-last input.
    assert np.array_equal(judge(images[:200].float() / 127.5 - 1).valid, result.valid[:200])
    assert np.array_equal(judge(images[:200].permute(0, 2, 3, 1).numpy()).shape, result.shape[:200])


def test_no_shape_confusion(generated):
    images, labels = generated
    result = judge(images)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels // 3, result.shape), 1)
    assert np.array_equal(confusion, np.diag(np.bincount(labels // 3, minlength=3)))
    triangles = images[labels // 3 == 2]
    flipped = judge(triangles.flip(2))                 # apex at the bottom: not a spec triangle
    assert flipped.valid.sum() == 0 and (flipped.shape == 2).sum() == 0


def test_size_64():
    images, labels = Shapes2D(600, size=64, seed=5).materialize()
    result = judge(images)
    labels = labels.numpy()
    assert (result.valid & (result.color == labels % 3) & (result.shape == labels // 3)).all()


def test_noise_and_blank_rejected():
    noise = torch.rand(2000, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert judge(noise).valid.mean() <= 0.01
    gaussian = torch.randn(500, 3, 32, 32, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    assert judge(gaussian).valid.sum() == 0
    blank = judge(torch.full((20, 3, 32, 32), -1.0))
    assert blank.valid.sum() == 0 and blank.failed["empty"].all() and (blank.color == -1).all()


def test_two_shapes_rejected():
    # Two well-formed circles side by side in one image; each alone is accepted.
    first = _params([0], [0], [6.5], [9.0], [16.0], [[220, 20, 20]])
    second = _params([0], [2], [6.5], [23.0], [16.0], [[20, 20, 220]])
    a, b = render_shapes(first, 32), render_shapes(second, 32)
    assert judge_image(a[0]) == (True, "red", "circle") and judge_image(b[0]) == (True, "blue", "circle")
    result = judge(torch.maximum(a, b))
    assert not result.valid[0] and result.failed["components"][0]


def test_blur_fade_and_mixed_colour_rejected(generated):
    images, _ = generated
    x = images[:500].numpy().astype(np.float32)
    assert judge(ndimage.gaussian_filter(x, (0, 0, 0.5, 0.5)).round().astype(np.uint8)).valid.mean() > 0.97
    blurred = ndimage.gaussian_filter(x, (0, 0, 1.5, 1.5)).round().astype(np.uint8)
    assert judge(blurred).valid.sum() == 0                              # spec: no anti-aliasing
    on = x.max(1) > 0
    rows, cols = np.arange(32)[None, :, None], np.arange(32)[None, None, :]
    centre_y = np.array([np.nonzero(m.any(1))[0].mean() for m in on])[:, None, None]
    centre_x = np.array([np.nonzero(m.any(0))[0].mean() for m in on])[:, None, None]
    faded = x * np.where(rows > centre_y, 0.5, 1.0)[:, None]            # bottom half at 50 %
    assert judge(faded.round().astype(np.uint8)).valid.sum() == 0        # spec: one flat colour
    other_colour = np.roll(x, 1, axis=1)                                 # red -> green -> blue -> red
    mixed = np.where((cols > centre_x)[:, None], other_colour, x)
    assert judge(mixed.astype(np.uint8)).valid.sum() == 0
    grey = _params([1], [0], [7.0], [16.0], [16.0], [[200, 200, 200]])   # no dominant channel
    assert judge_image(render_shapes(grey, 32)[0])[:2] == (False, None)


def test_wrong_geometry_rejected():
    # Too small, too large (beyond 2r = 0.7 size with slack), touching the border, a 2:1 rectangle.
    tiny = _params([1], [0], [2.0], [16.0], [16.0], [[220, 0, 0]])
    huge = _params([1], [0], [14.0], [16.0], [16.0], [[220, 0, 0]])
    edge = _params([1], [0], [6.0], [6.0], [16.0], [[220, 0, 0]])
    for params, check in ((tiny, "size"), (huge, "size"), (edge, "border")):
        result = judge(render_shapes(params, 32))
        assert not result.valid[0] and result.failed[check][0]
    rectangle = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    rectangle[0, 1, 10:18, 6:22] = 230
    result = judge(rectangle)
    assert not result.valid[0] and result.failed["aspect"][0] and result.color[0] == 1


def test_evaluate_samples(generated):
    images, labels = generated
    prompts = [f"a {COLORS[l % 3]} {SHAPES[l // 3]}" for l in labels[:900]]
    metrics = evaluate_samples(images[:900], prompts)
    assert metrics["n"] == 900 and metrics["valid_rate"] == 1.0 and metrics["prompt_accuracy"] == 1.0
    assert sum(metrics["class_counts"].values()) == 900 and metrics["class_entropy"] > 0.99
    assert set(metrics["rejected_by"]) >= {"components", "color", "kind"}
    shuffled = [prompts[(i + 1) % 900] for i in range(900)]              # mostly mismatched
    assert evaluate_samples(images[:900], shuffled)["prompt_accuracy"] < 0.3
    assert "prompt_accuracy" not in evaluate_samples(images[:10])
    assert evaluate_samples(images[:300], labels=labels[:300])["label_accuracy"] == 1.0
    assert evaluate_samples(images[:300], labels=(labels[:300] + 1) % 9)["label_accuracy"] == 0.0
    assert parse_prompt("A Blue Triangle") == (2, 2) and parse_prompt("red square") == (0, 1)
    with pytest.raises(ValueError, match="purple"):
        evaluate_samples(images[:1], ["a purple circle"])
    with pytest.raises(ValueError, match="2 prompts"):
        evaluate_samples(images[:1], ["a red circle"] * 2)


def test_judge_speed_sanity():
    images, _ = Shapes2D(5000, seed=9).materialize()
    assert judge(images, chunk=1024).valid.shape == (5000,)


class PoolingAutoencoder(FirstStage):
    """Latent = the image average-pooled by ``factor``; decode = nearest upsampling, optionally blurred."""

    def __init__(self, factor: int, blur: bool):
        super().__init__(latent_channels=3)
        self.factor, self.blur = factor, blur
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a parameter to read the device from

    def encode(self, x):
        z = torch.nn.functional.avg_pool2d(x, self.factor) if self.factor > 1 else x
        return DiagonalGaussian(z, torch.zeros_like(z))

    def decode(self, z):
        x = torch.nn.functional.interpolate(z, scale_factor=self.factor) if self.factor > 1 else z
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) if self.blur else x


@pytest.mark.parametrize("factor, blur", [(1, False), (1, True), (4, False)])
def test_reconstructions_are_judged_like_samples(generated, factor, blur):
    """A lossless first stage keeps every image; a 3×3 blur (soft edges) or 4×4 blocks (lost shapes) fail."""
    images, labels = generated
    captions = [caption_for_label(int(label)) for label in labels[:256]]
    metrics = evaluate_reconstructions(PoolingAutoencoder(factor, blur), uint8_to_float(images[:256]), captions,
                                       batch_size=100)
    assert metrics["n"] == 256
    if factor == 1 and not blur:
        assert metrics["valid_rate"] == metrics["prompt_accuracy"] == 1.0
    else:
        assert metrics["valid_rate"] < 0.1 and metrics["prompt_accuracy"] < 0.1
    if blur:
        assert metrics["rejected_by"]["sharpness"] > 0.9
