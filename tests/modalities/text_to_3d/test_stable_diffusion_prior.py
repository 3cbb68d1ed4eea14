"""A local diffusers Stable Diffusion folder as the SDS prior (`pretrained=DIR`), on a tiny randomly initialised
pipeline written with save_pretrained: text embeddings and x̂₀ equal diffusers' own, one SDS step gives a finite
loss and gradient and changes the field (both SDS spaces), `mldm sds pretrained=` end to end, clear errors."""
import json

import pytest
import torch

from modalities.text_to_3d.distill import DistillSettings, distill
from modalities.text_to_3d.fields import VoxelField
from modalities.text_to_3d.stable_diffusion import StableDiffusionPrior
from shared.errors import ConfigError
from shared.io.sample_dir import read_index


def _tiny_clip_tokenizer(folder):
    """A CLIP BPE tokenizer over single bytes (CLIP's own first 512 entries), no merges: enough to tokenise."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16), len(vocab)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("sd")
    tokenizer, vocab_size = _tiny_clip_tokenizer(root / "tokenizer_files")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=16, bos_token_id=vocab_size - 2,
                                                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=16)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    folder = root / "tiny-sd"
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prior(sd_folder):
    return StableDiffusionPrior(sd_folder, "cpu")


def test_text_embeddings_are_the_pipelines_own(sd_folder, prior):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True, safety_checker=None)
    embeds, negative = pipeline.encode_prompt(["a red torus"], "cpu", 1, True)
    assert torch.allclose(prior.embed(["a red torus"]), embeds, atol=1e-6)
    assert torch.allclose(prior.embed([""]), negative, atol=1e-6)
    assert prior.image_size == 16 and prior.render_size == 16


def test_x0_at_a_grid_step_equals_diffusers_unet_epsilon(sd_folder, prior):
    from diffusers import PNDMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    alphas_cumprod = PNDMScheduler.from_pretrained(sd_folder / "scheduler").alphas_cumprod.double()
    assert torch.allclose(prior.denoiser.schedule.alphas_cumprod, alphas_cumprod)
    z_t, states, k = torch.randn(2, 4, 8, 8), prior.embed(["a red torus", "a blue box"]), 499
    alpha_bar = alphas_cumprod[k].float()
    with torch.no_grad():
        eps = unet(z_t, k, encoder_hidden_states=states).sample
        x0 = prior.denoiser(z_t, prior.denoiser.schedule.t_from_index(torch.tensor([k, k])), states)
    assert torch.allclose(x0, (z_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt(), atol=1e-4)


@pytest.mark.parametrize("space", ["image", "latent"])
def test_one_sds_step_is_finite_and_changes_the_field(prior, space):
    field = VoxelField(resolution=12)
    before = {k: v.clone() for k, v in field.state_dict().items()}
    grads = []
    optimizer = torch.optim.Adam(field.parameters(), lr=0.05)
    step = optimizer.step

    def recording_step(*args, **kwargs):
        grads.extend(p.grad.clone() for p in field.parameters() if p.grad is not None)
        return step(*args, **kwargs)

    optimizer.step = recording_step
    settings = DistillSettings(steps=1, views=1, ray_samples=8, space=space, ambient_only_steps=0, size=8)
    [loss] = distill(prior, field, "a red torus", settings, seed=0, optimizer=optimizer)
    assert settings.guidance_scale is None and prior.default_guidance_scale == 100.0
    assert loss > 0 and torch.isfinite(torch.tensor(loss))
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert any(not torch.equal(before[k], v) for k, v in field.state_dict().items())


def test_mldm_sds_pretrained_end_to_end(sd_folder, tmp_path, mldm_here):
    out_dir = tmp_path / "out"
    out = mldm_here("sds", f"pretrained={sd_folder}", "prompt=a hamburger", f"out_dir={out_dir}", "steps=2",
                    "field_resolution=12", "mesh_resolution=24", "turntable_frames=1", "device=cpu",
                    "sds.ray_samples=8")
    assert out.returncode == 0, out.stderr[-4000:]
    [record] = read_index(out_dir)
    assert record["prompt"] == "a hamburger" and (out_dir / "000000_field.safetensors").is_file()


@pytest.mark.parametrize("make,message", [
    (lambda root: root / "absent", "not a folder"),
    (lambda root: (root / "no_unet").mkdir() or root / "no_unet", "no unet, vae, text_encoder, tokenizer, scheduler"),
])
def test_a_folder_that_is_not_stable_diffusion_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message):
        StableDiffusionPrior(make(tmp_path), "cpu")


def test_no_prior_is_one_clear_error(tmp_path, mldm_here):   # both: test_sds_cli (it has an mldm run)
    out = mldm_here("sds", "prompt=a red box", f"out_dir={tmp_path / 'out'}")
    assert out.returncode == 2 and "give exactly one prior" in out.stderr, out.stderr
