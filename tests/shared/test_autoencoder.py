"""First-stage contract: the diagonal Gaussian posterior, latent statistics and the autoencoder loss."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributions import Normal, kl_divergence

from shared.first_stage.autoencoder import (DiagonalGaussian, FirstStage, LatentStatistics, QuantizedPosterior,
                                autoencoder_loss)


def random_gaussian(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(shape, generator=g, dtype=torch.float64),
                            torch.randn(shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(5,), (5, 3), (4, 2, 3, 3), (2, 2, 2, 3, 3)])
def test_kl_matches_closed_form_and_torch_distributions(shape):
    q = random_gaussian(shape)
    mean, var, logvar = q.mean, q.logvar.exp(), q.logvar
    closed = 0.5 * (mean**2 + var - 1 - logvar).reshape(shape[0], -1).sum(1)
    reference = kl_divergence(Normal(mean, var.sqrt()), Normal(0.0, 1.0)).reshape(shape[0], -1).sum(1)
    assert q.kl().shape == (shape[0],)
    torch.testing.assert_close(q.kl(), closed)
    torch.testing.assert_close(q.kl(), reference)
    p = random_gaussian(shape, seed=1)
    reference = kl_divergence(Normal(mean, q.std), Normal(p.mean, p.std)).reshape(shape[0], -1).sum(1)
    torch.testing.assert_close(q.kl(p), reference)


def test_nll_matches_torch_distributions():
    q = random_gaussian((3, 4, 5))
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    reference = -Normal(q.mean, q.std).log_prob(x).sum((1, 2))
    torch.testing.assert_close(q.nll(x), reference)


def test_logvar_is_clamped_like_ldm_and_parameters_split_on_channels():
    q = DiagonalGaussian(torch.zeros(2, 3), torch.tensor([[-100.0, 0.0, 100.0]] * 2))
    assert q.logvar.tolist()[0] == [-30.0, 0.0, 20.0]
    params = torch.randn(2, 8, 3, 3)
    q = DiagonalGaussian.from_parameters(params)
    torch.testing.assert_close(q.mean, params[:, :4])
    torch.testing.assert_close(q.logvar, params[:, 4:])


def test_sample_has_the_posterior_mean_and_variance_and_is_reproducible():
    mean, logvar = torch.tensor([0.5, -2.0, 3.0]), torch.tensor([0.0, -1.0, 1.5])
    n = 200_000
    q = DiagonalGaussian(mean.expand(n, 3), logvar.expand(n, 3))
    z = q.sample(torch.Generator().manual_seed(0))
    assert (z.mean(0) - mean).abs().max() < 4 * logvar.exp().sqrt().max() / math.sqrt(n)
    torch.testing.assert_close(z.var(0), logvar.exp(), rtol=0.02, atol=0)
    torch.testing.assert_close(q.sample(torch.Generator().manual_seed(3)), q.sample(torch.Generator().manual_seed(3)))
    assert not torch.equal(q.sample(torch.Generator().manual_seed(3)), q.sample(torch.Generator().manual_seed(4)))
    assert torch.equal(q.mode(), q.mean)


def test_sample_is_reparameterised():
    mean, logvar = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    DiagonalGaussian(mean, logvar).sample(torch.Generator().manual_seed(0)).sum().backward()
    assert torch.equal(mean.grad, torch.ones(2, 3)) and logvar.grad.abs().sum() > 0


def shifted_latents(seed=0, shape=(64, 4, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    centre, spread = torch.tensor([1.0, -3.0, 0.5, 8.0]), torch.tensor([0.2, 5.0, 1.0, 0.05])
    return centre.view(1, 4, 1, 1) + spread.view(1, 4, 1, 1) * torch.randn(shape, generator=g)


@pytest.mark.parametrize("per_channel", [False, True])
def test_latent_statistics_standardise_and_round_trip(per_channel):
    z = shifted_latents()
    stats = LatentStatistics(4).estimate(z, per_channel=per_channel)
    n = stats.normalize(z)
    if per_channel:
        torch.testing.assert_close(n.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(n.transpose(0, 1).reshape(4, -1).std(1), torch.ones(4), atol=1e-5, rtol=0)
    else:
        assert abs(n.mean().item()) < 1e-5 and abs(n.std().item() - 1) < 1e-5
        assert torch.equal(stats.shift, stats.shift[0].expand(4)) and stats.shift.shape == (4,)
    torch.testing.assert_close(stats.denormalize(n), z, atol=1e-5, rtol=1e-5)
    assert bool(stats.estimated)


def test_latent_statistics_sd_convention_iterables_and_channel_last():
    z = shifted_latents()
    stats = LatentStatistics(4).estimate(z, center=False)
    assert torch.equal(stats.shift, torch.zeros(4))
    torch.testing.assert_close(stats.scale, (1 / z.std()).expand(4))  # the LDM/SD scale factor, made explicit
    in_parts = LatentStatistics(4).estimate(iter(z.split(10)), per_channel=True)
    whole = LatentStatistics(4).estimate(z, per_channel=True)
    torch.testing.assert_close(in_parts.shift, whole.shift)
    torch.testing.assert_close(in_parts.scale, whole.scale)
    last = LatentStatistics(4, channel_dim=-1).estimate(z.movedim(1, -1), per_channel=True)  # e.g. [B, N, C] sets
    torch.testing.assert_close(last.scale, whole.scale)
    with pytest.raises(ValueError, match="channels"):
        LatentStatistics(3).estimate(z)


def test_unestimated_statistics_are_the_identity():
    z = torch.randn(2, 4, 3, 3)
    stats = LatentStatistics(4)
    assert torch.equal(stats.normalize(z), z) and torch.equal(stats.denormalize(z), z) and not bool(stats.estimated)


class ToyFirstStage(FirstStage):
    """A 2x-downsampling convolutional VAE of 1-D signals: the contract on a rank other than images."""

    def __init__(self):
        super().__init__(latent_channels=2)
        self.enc = nn.Conv1d(3, 4, 2, stride=2)
        self.dec = nn.ConvTranspose1d(2, 3, 2, stride=2)

    def encode(self, x):
        return DiagonalGaussian.from_parameters(self.enc(x))

    def decode(self, z):
        return self.dec(z)

    def last_layer(self):
        return self.dec.weight


def signals(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(n, 3, 10, generator=g)


def test_estimate_from_a_loader_then_normalised_latents_are_standard_and_saved(tmp_path):
    torch.manual_seed(0)
    model = ToyFirstStage().train()
    data = signals(64)
    loader = [(batch, torch.zeros(len(batch))) for batch in data.split(16)]  # (x, label) batches
    model.estimate_latent_statistics(loader, max_batches=3, per_channel=True)
    assert model.training  # mode restored
    z = model.encode_latent(data[:48])
    torch.testing.assert_close(z.mean((0, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.transpose(0, 1).reshape(2, -1).std(1), torch.ones(2), atol=1e-4, rtol=0)
    # encode_latent / decode_latent go through the statistics
    raw = model.encode(data).mode()
    torch.testing.assert_close(model.encode_latent(data), model.latent_stats.normalize(raw))
    torch.testing.assert_close(model.decode_latent(model.encode_latent(data)), model.decode(raw), atol=1e-5, rtol=1e-5)
    # the statistics are part of the state dict, survive safetensors and load into a fresh model
    state = model.state_dict()
    assert {"latent_stats.shift", "latent_stats.scale", "latent_stats.estimated"} <= set(state)
    save_file(state, tmp_path / "model.safetensors")
    fresh = ToyFirstStage()
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(fresh.latent_stats.shift, model.latent_stats.shift)
    assert torch.equal(fresh.latent_stats.scale, model.latent_stats.scale) and bool(fresh.latent_stats.estimated)
    torch.testing.assert_close(fresh.encode_latent(data), model.encode_latent(data))


def test_estimate_accepts_dict_batches_and_sampled_latents():
    model = ToyFirstStage()
    loader = [{"x": batch} for batch in signals(32).split(8)]
    stats = model.estimate_latent_statistics(loader, sample=True, generator=torch.Generator().manual_seed(0))
    assert stats is model.latent_stats and bool(stats.estimated)
    assert model.encode_latent(signals(4), sample=True, generator=torch.Generator().manual_seed(0)).shape == (4, 2, 5)


def test_autoencoder_loss_terms():
    x, rec = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    posterior = random_gaussian((4, 2, 2, 2))
    out = autoencoder_loss(x, rec, posterior, kl_weight=0.1, perceptual=lambda a, b: (a - b).pow(2),
                           perceptual_weight=0.5)
    l1, p = (x - rec).abs().mean(), (x - rec).pow(2).mean()
    torch.testing.assert_close(out["l1"], l1)
    torch.testing.assert_close(out["rec"], l1 + 0.5 * p)
    torch.testing.assert_close(out["kl"], (posterior.kl() / (3 * 8 * 8)).mean().float())  # nats per data element
    torch.testing.assert_close(out["total"], out["rec"] + 0.1 * out["kl"])
    vq = autoencoder_loss(x, rec, QuantizedPosterior(torch.zeros(4, 2), torch.tensor(0.3)), codebook_weight=2.0)
    assert "kl" not in vq and "perceptual" not in vq
    torch.testing.assert_close(vq["total"], l1 + 2.0 * torch.tensor(0.3))
