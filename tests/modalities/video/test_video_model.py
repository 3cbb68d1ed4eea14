"""The video first stage and sampling: the temporal decoder starts as the image decoder exactly and its
fine-tuning leaves the encoder and latent statistics untouched; extension windows cover the requested frames;
a given first frame is kept exactly and longer videos are made window by window; factorised text-to-video starts
from the image model's draw."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from modalities.image.autoencoder import ImageAutoencoderKL
from modalities.image.backbones import DiTBackbone
from modalities.video.autoencoder import FrameByFrame, VideoAutoencoder
from modalities.video.backbones import VideoDiTBackbone
from modalities.video.sampling import generate_videos, windows
from modalities.video.task import DecoderStage
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.parameterization import VPrediction
from shared.diffusion.schedules import CosineSchedule
from shared.first_stage.gan import AdversarialTraining, PatchDiscriminator
from shared.conditioning.text_encoder import TextCondition
from shared.training.randomness import BatchRandomness


def tiny_image_autoencoder():
    torch.manual_seed(0)
    model = ImageAutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2)
    model.latent_stats.shift.fill_(0.1)
    model.latent_stats.scale.fill_(2.0)
    return model.eval()


def test_the_video_decoder_starts_as_the_image_decoder_frame_by_frame():
    image = tiny_image_autoencoder()
    z = torch.randn(2, 8, 2, 8, 8)
    with torch.no_grad():
        expected = FrameByFrame(image).decode_latent(z)
        assert torch.equal(VideoAutoencoder(image).decode_latent(z), expected)


def test_decoder_fine_tuning_trains_the_decoder_and_nothing_else():
    image = tiny_image_autoencoder()
    video = VideoAutoencoder(image)
    adversarial = AdversarialTraining(PatchDiscriminator(3, 8, 1, dims=3), disc_start=0)
    stage = DecoderStage(video, adversarial, torch.randint(0, 256, (4, 8, 3, 16, 16), dtype=torch.uint8))
    frozen = {k: v.clone() for k, v in image.state_dict().items() if not k.startswith("vae.decoder.")}
    decoder = {k: v.clone() for k, v in image.state_dict().items() if k.startswith("vae.decoder.")}
    optimizers = {group: torch.optim.Adam(params, lr=1e-3) for group, params in stage.param_groups().items()}
    for step in range(2):
        losses, logs = stage.losses(stage.batch(torch.arange(2), "cpu"), BatchRandomness(0, step), step)
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        sum(losses.values()).backward()
        for optimizer in optimizers.values():
            optimizer.step()
        assert {"l1", "g_loss", "d_loss", "d_weight"} <= set(logs)
    state = image.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # encoder, quant conv, latent statistics
    assert any(not torch.equal(state[k], v) for k, v in decoder.items())
    assert any(p.abs().sum() > 0 for p in video.temporal.parameters())


@pytest.mark.parametrize("num_frames,window,context,first,expected", [
    (8, 8, 0, 0, [(0, 8)]),
    (8, 8, 2, 1, [(1, 7)]),
    (24, 8, 2, 0, [(0, 8), (2, 6), (2, 6), (2, 4)]),
    (12, 8, 3, 1, [(1, 7), (3, 4)]),
    (4, 8, 0, 0, [(0, 4)]),
])
def test_extension_windows_make_exactly_the_requested_frames(num_frames, window, context, first, expected):
    plan = windows(num_frames, window, context, first)
    assert plan == expected
    assert first + sum(new for _, new in plan) == num_frames and all(k + n <= window for k, n in plan)


def test_extending_without_context_frames_is_refused():
    with pytest.raises(ValueError, match="context_frames"):
        windows(16, 8, 0, 0)


class TinyText:
    """A deterministic text encoder with the real interface (pooled vectors from the prompt's characters)."""
    dim = 16

    def __call__(self, prompts):
        pooled = torch.stack([torch.tensor([float(ord(c)) for c in (p + " " * 16)[:16]]) / 128 for p in prompts])
        return TextCondition(pooled[:, None], torch.ones(len(prompts), 1, dtype=torch.bool), pooled)

    def null(self, batch):
        return self([""] * batch)


def test_a_first_frame_is_kept_exactly_and_longer_videos_are_made_window_by_window():
    autoencoder = tiny_image_autoencoder()
    torch.manual_seed(1)
    image = DiTBackbone(2, 8, 16, width=32, depth=1, heads=2)
    for parameter in image.parameters():
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.02)
    denoiser = Denoiser(VideoDiTBackbone(image, context_frames=True), CosineSchedule(), VPrediction()).eval()
    cfg = OmegaConf.create({"sampler": {"_target_": "shared.diffusion.samplers.sample_ddim", "_partial_": True},
                            "guidance": {"_target_": "shared.cli.guidance.guidance", "scale": 2.0}})
    first = torch.randn(2, 8, 8)
    decoder = FrameByFrame(autoencoder)
    common = dict(steps=2, seed=0, device="cpu", latent_shape=(2, 8), window=4, context_frames=1)
    out = generate_videos(cfg, denoiser, decoder, TinyText(), ["a", "b"], num_frames=10, first_frame=first, **common)
    videos = out["videos"]
    assert videos.shape == (2, 10, 3, 16, 16)  # f = 2
    with torch.no_grad():
        expected = autoencoder.decode_latent(first[None]).clamp(-1, 1)
    # the latent is kept exactly; decoding 20 frames in one batch rounds differently from decoding one
    torch.testing.assert_close(videos[:, 0], expected.expand(2, -1, -1, -1), rtol=0, atol=1e-5)
    short = generate_videos(cfg, denoiser, decoder, TinyText(), ["a", "b"], num_frames=4, first_frame=first, **common)
    torch.testing.assert_close(short["videos"], videos[:, :4], rtol=0, atol=1e-5)  # the first window: the same draw


def test_factorised_text_to_video_starts_each_video_from_the_image_models_own_draw():
    """Emu Video's factorisation: the image denoiser draws frame 0 from the prompt (the same draw as sampling it
    alone with the video's seed), the video model the rest."""
    from shared.diffusion.draws import draw_randn
    from shared.generation.generate import generate, sample_latent
    decoder = FrameByFrame(tiny_image_autoencoder())
    torch.manual_seed(1)
    image = DiTBackbone(2, 8, 16, width=32, depth=1, heads=2)
    for parameter in image.parameters():
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.02)
    image_denoiser = Denoiser(image, CosineSchedule(), VPrediction()).eval()
    video = Denoiser(VideoDiTBackbone(copy.deepcopy(image), context_frames=True), CosineSchedule(),
                     VPrediction()).eval()
    cfg = OmegaConf.create({"sampler": {"_target_": "shared.diffusion.samplers.sample_ddim", "_partial_": True},
                            "guidance": {"_target_": "shared.cli.guidance.guidance", "scale": 2.0}})
    prompts, text = ["a red circle", "a blue square"], TinyText()
    out = generate_videos(cfg, video, decoder, text, prompts, steps=2, seed=3, device="cpu", latent_shape=(2, 8),
                          num_frames=4, window=4, image_denoiser=image_denoiser)

    def image_alone(indices, generators):
        x_T = draw_randn((len(indices), 2, 8, 8), generators, "cpu")
        z = sample_latent(cfg, image_denoiser, x_T, generators, 2, cond=text([prompts[i] for i in indices]),
                          uncond=text.null(len(indices)))
        return {"frames": decoder.decode_latent(z[:, None]).clamp(-1, 1)}

    expected = generate(image_alone, 2, 3, None)["frames"][:, 0]
    torch.testing.assert_close(out["videos"][:, 0], expected, rtol=0, atol=1e-5)
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # each video its own first frame


def test_a_clip_too_short_for_the_3d_discriminator_is_one_clear_error():
    from modalities.video.task import check_clip_fits
    from shared.errors import ConfigError

    discriminator = PatchDiscriminator(3, 8, 1, dims=3)
    check_clip_fits(discriminator, (8, 3, 32, 32))
    with pytest.raises(ConfigError, match="data.num_frames=4"):
        check_clip_fits(discriminator, (4, 3, 32, 32))
