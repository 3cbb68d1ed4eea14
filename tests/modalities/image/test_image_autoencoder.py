"""Image first stages (diffusers AutoencoderKL / VQModel behind the FirstStage contract)."""
import pytest
import torch

from modalities.image.autoencoder import ImageAutoencoderKL, ImageVQAutoencoder
from shared.first_stage.autoencoder import DiagonalGaussian, QuantizedPosterior, autoencoder_loss
from shared.first_stage.gan import AdversarialTraining, PatchDiscriminator

TINY = dict(block_out_channels=(32, 64, 64), latent_channels=4, layers_per_block=1, norm_num_groups=16)
SMALLER = dict(block_out_channels=(16, 32, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8)


def coloured_squares(n, size=32, seed=0):
    """Black images in [-1, 1], each with one axis-aligned square of a random saturated colour."""
    g = torch.Generator().manual_seed(seed)
    images = -torch.ones(n, 3, size, size)
    for i in range(n):
        side = int(torch.randint(8, 17, (), generator=g))
        top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
        colour = torch.rand(3, generator=g) * 2 - 1
        images[i, :, top:top + side, left:left + side] = colour.view(3, 1, 1)
    return images


@pytest.fixture(scope="module")
def kl_model():
    torch.manual_seed(0)
    return ImageAutoencoderKL(**TINY)


@pytest.fixture(scope="module")
def vq_model():
    torch.manual_seed(0)
    return ImageVQAutoencoder(num_vq_embeddings=256, vq_embed_dim=4, **TINY)


def test_kl_shapes_and_factor(kl_model):
    x = coloured_squares(2)
    assert kl_model.factor == 4 and kl_model.latent_channels == 4
    posterior = kl_model.encode(x)
    assert isinstance(posterior, DiagonalGaussian)
    assert posterior.mode().shape == (2, 4, 8, 8) and posterior.kl().shape == (2,)
    assert kl_model.decode(posterior.sample()).shape == x.shape
    reconstruction, posterior = kl_model(x)
    assert reconstruction.shape == x.shape
    assert kl_model.last_layer() is kl_model.vae.decoder.conv_out.weight


def test_encode_latent_and_decode_latent_use_the_statistics():
    torch.manual_seed(0)
    model = ImageAutoencoderKL(**SMALLER)
    data = coloured_squares(16)
    stats = model.estimate_latent_statistics([(b, None) for b in data.split(8)], per_channel=True)
    assert bool(stats.estimated) and not torch.equal(stats.scale, torch.ones(4))
    with torch.no_grad():
        z = model.encode_latent(data)
        torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(z.transpose(0, 1).reshape(4, -1).std(1), torch.ones(4), atol=1e-4, rtol=0)
        raw = model.encode(data[:2]).mode()
        torch.testing.assert_close(model.encode_latent(data[:2]), stats.normalize(raw))
        torch.testing.assert_close(model.decode_latent(stats.normalize(raw)), model.decode(raw), atol=1e-5, rtol=1e-4)
    fresh = ImageAutoencoderKL(**SMALLER)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.latent_stats.scale, stats.scale)


def test_vq_codebook_loss_and_quantized_latents_are_codebook_entries(vq_model):
    x = coloured_squares(2)
    posterior = vq_model.encode(x)
    assert isinstance(posterior, QuantizedPosterior) and vq_model.latent_channels == 4
    z = posterior.mode()
    assert z.shape == (2, 4, 8, 8) and posterior.indices.shape == (2, 8, 8)
    assert torch.isfinite(posterior.loss) and posterior.loss.item() > 0
    rows = z.permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(rows, vq_model.codebook[posterior.indices.flatten()], atol=1e-6, rtol=0)
    assert torch.cdist(rows, vq_model.codebook).min(1).values.max() < 1e-5
    with torch.no_grad():  # decode quantizes: a no-op on codebook entries, a snap for anything near them
        reconstruction, _ = vq_model(x)
        torch.testing.assert_close(vq_model.decode(z), reconstruction)
        torch.testing.assert_close(vq_model.decode(z + 1e-5 * torch.randn_like(z)), reconstruction)
    assert reconstruction.shape == x.shape and vq_model.factor == 4
    assert vq_model.last_layer() is vq_model.vq.decoder.conv_out.weight


def test_vq_loss_puts_beta_on_the_commitment_term(vq_model):
    """Both variants have the value (1 + β)·mse; the paper's puts weight 1 on the codebook gradient,
    diffusers' legacy default puts β there."""
    x = coloured_squares(2)
    grads = {}
    for legacy in (False, True):
        vq_model.vq.quantize.legacy = legacy
        vq_model.zero_grad()
        posterior = vq_model.encode(x)
        h = vq_model.vq.encode(x).latents
        torch.testing.assert_close(posterior.loss, 1.25 * (posterior.mode() - h).pow(2).mean())
        posterior.loss.backward()
        grads[legacy] = vq_model.codebook.grad.clone()
    vq_model.vq.quantize.legacy = False
    vq_model.zero_grad()
    torch.testing.assert_close(grads[True], 0.25 * grads[False])


def test_from_pretrained_takes_the_latent_statistics_from_the_diffusers_config(tmp_path):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, scaling_factor=0.5,
                        shift_factor=0.1)
    vae.save_pretrained(tmp_path)
    model = ImageAutoencoderKL.from_pretrained(str(tmp_path))
    assert torch.allclose(model.latent_stats.shift, torch.full((4,), 0.1))
    assert torch.equal(model.latent_stats.scale, torch.full((4,), 0.5)) and model.factor == 1


def test_rec_kl_training_reduces_the_reconstruction_loss():
    torch.manual_seed(0)
    model = ImageAutoencoderKL(**SMALLER)
    data = coloured_squares(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        reconstruction, posterior = model(data, generator=generator)
        loss = autoencoder_loss(data, reconstruction, posterior, kl_weight=1e-4)
        optimizer.zero_grad()
        loss["total"].backward()
        optimizer.step()
        losses.append(loss["rec"].item())
    final = sum(losses[-5:]) / 5
    assert final < 0.5 * sum(losses[:5]) / 5, losses
    # and below the best constant image (the per-pixel median, L1-optimal): the latents carry each image
    best_constant = (data - data.median(0).values).abs().mean().item()
    assert final < 0.85 * best_constant, (final, best_constant)


def test_one_generator_and_discriminator_step_with_hinge_loss_and_adaptive_weight():
    torch.manual_seed(0)
    model = ImageAutoencoderKL(**SMALLER)
    adversarial = AdversarialTraining(PatchDiscriminator(3, channels=8, layers=2), disc_start=0, loss="hinge")
    opt_ae = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(adversarial.discriminator.parameters(), lr=1e-3)
    d_before = [p.detach().clone() for p in adversarial.discriminator.parameters()]
    ae_before = model.last_layer().detach().clone()
    x = coloured_squares(4)
    reconstruction, posterior = model(x)
    rec = autoencoder_loss(x, reconstruction, posterior, kl_weight=1e-6)
    adv = adversarial(x, reconstruction, step=0, last_layer=model.last_layer(), rec_loss=rec["rec"])
    assert adv["d_weight"].item() > 0 and torch.isfinite(adv["generator"]) and torch.isfinite(adv["discriminator"])
    opt_ae.zero_grad()
    opt_d.zero_grad()
    (rec["total"] + adv["generator"] + adv["discriminator"]).backward()  # the terms do not leak into each other
    opt_ae.step()
    opt_d.step()
    assert any(not torch.equal(a, p) for a, p in zip(d_before, adversarial.discriminator.parameters()))
    assert not torch.equal(ae_before, model.last_layer())


@pytest.mark.parametrize("cls", [ImageAutoencoderKL, ImageVQAutoencoder])
def test_bf16_autocast_training_pass(cls):
    torch.manual_seed(0)
    model = cls(**SMALLER)
    adversarial = AdversarialTraining(PatchDiscriminator(3, channels=8, layers=2))
    x = coloured_squares(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reconstruction, posterior = model(x)
        rec = autoencoder_loss(x, reconstruction, posterior)
        adv = adversarial(x, reconstruction, step=0, last_layer=model.last_layer(), rec_loss=rec["rec"])
        z = model.encode_latent(x)
    losses = [rec["total"], adv["generator"], adv["discriminator"]]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses)
    sum(losses).backward()
    assert model.decode_latent(z).dtype == torch.float32  # a bf16 latent decodes outside autocast too
