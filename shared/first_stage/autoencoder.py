"""The first-stage contract: an autoencoder that lifts data of any tensor rank into a latent space.

``encode(x)`` returns a posterior-like object (``.mode()``, ``.sample(generator)``; a
``DiagonalGaussian`` for KL-regularised models, a ``QuantizedPosterior`` with a codebook ``.loss`` for
VQ models); ``decode(z)`` maps a latent back. The diffusion model never sees raw latents: it works on
``encode_latent`` / ``decode_latent``, which shift and scale by ``LatentStatistics`` estimated from
data and stored as buffers of the autoencoder (Rombach et al. 2022, §4.3.2 / App. D.1: the LDM "scale
factor" made explicit) — so no magic scale constant lives anywhere else.
Patch discriminator and GAN losses: ``shared.first_stage.gan``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from shared.diffusion.draws import draw_randn

LOGVAR_RANGE = (-30.0, 20.0)  # as in LDM / taming: keeps exp(logvar) finite


def _sum_per_item(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))) (Kingma & Welling 2014); all reductions are per item."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean, self.logvar = mean, logvar.clamp(*LOGVAR_RANGE)

    @classmethod
    def from_parameters(cls, parameters: torch.Tensor, dim: int = 1) -> DiagonalGaussian:
        """Split an encoder output holding [mean, logvar] along ``dim``."""
        return cls(*parameters.chunk(2, dim=dim))

    @property
    def var(self) -> torch.Tensor:
        return self.logvar.exp()

    @property
    def std(self) -> torch.Tensor:
        return (0.5 * self.logvar).exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw mean + std·ε (differentiable in mean and logvar)."""
        eps = draw_randn(self.mean.shape, generator, self.mean.device, self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(q ‖ other) per item, summed over non-batch dims; ``other`` defaults to N(0, I)."""
        if other is None:
            return 0.5 * _sum_per_item(self.mean**2 + self.var - 1.0 - self.logvar)
        return 0.5 * _sum_per_item((self.mean - other.mean) ** 2 / other.var + self.var / other.var
                                   - 1.0 - self.logvar + other.logvar)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """−log q(x) per item, summed over non-batch dims."""
        return 0.5 * _sum_per_item(math.log(2 * math.pi) + self.logvar + (x - self.mean) ** 2 / self.var)


class QuantizedPosterior:
    """A VQ encoding (van den Oord et al. 2017): the quantized latent (straight-through gradient), its
    codebook indices and the codebook + commitment loss. Deterministic: sample() is mode()."""

    def __init__(self, quantized: torch.Tensor, loss: torch.Tensor, indices: torch.Tensor | None = None):
        self.quantized, self.loss, self.indices = quantized, loss, indices

    def mode(self) -> torch.Tensor:
        return self.quantized

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.quantized


class LatentStatistics(nn.Module):
    """z ↦ (z − shift)·scale with shift = mean, scale = 1/std of data latents.

    Buffers always hold one value per latent channel (a scalar estimate is repeated), so a state dict
    loads into a fresh model whatever the estimate was. Until estimated, the map is the identity.
    """

    def __init__(self, num_channels: int, channel_dim: int = 1):
        super().__init__()
        self.channel_dim = channel_dim
        self.register_buffer("shift", torch.zeros(num_channels))
        self.register_buffer("scale", torch.ones(num_channels))
        self.register_buffer("estimated", torch.tensor(False))

    def _view(self, value: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shape = [1] * z.ndim
        shape[self.channel_dim] = value.numel()
        return value.to(z.device, torch.float32).view(shape)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.float() - self._view(self.shift, z)) * self._view(self.scale, z)).to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() / self._view(self.scale, z) + self._view(self.shift, z)).to(z.dtype)

    @torch.no_grad()
    def estimate(self, latents: torch.Tensor | Iterable[torch.Tensor], per_channel: bool = False,
                 center: bool = True) -> LatentStatistics:
        """Set shift/scale from a latent tensor or an iterable of latent batches (float64 moments).

        ``center=False`` keeps shift = 0 and only rescales (the LDM/SD convention, scale = 1/std).
        """
        if isinstance(latents, torch.Tensor):
            latents = [latents]
        count, total, total_sq = 0, 0.0, 0.0
        for z in latents:
            if z.shape[self.channel_dim] != self.shift.numel():
                raise ValueError(f"latents have {z.shape[self.channel_dim]} channels at dim {self.channel_dim}, "
                                 f"expected {self.shift.numel()}")
            rows = z.detach().movedim(self.channel_dim, -1).reshape(-1, self.shift.numel()).double()
            if not per_channel:
                rows = rows.reshape(-1, 1)
            count += rows.shape[0]
            total = total + rows.sum(0)
            total_sq = total_sq + (rows**2).sum(0)
        if count < 2:
            raise ValueError("need at least two latent values to estimate statistics")
        mean = total / count
        std = ((total_sq - count * mean**2).clamp_min(0) / (count - 1)).sqrt()  # unbiased, like torch.std
        self.shift.copy_((mean if center else torch.zeros_like(mean)).expand_as(self.shift))
        self.scale.copy_((1.0 / std.clamp_min(1e-12)).expand_as(self.scale))
        self.estimated.fill_(True)
        return self

    def extra_repr(self) -> str:
        return f"channels={self.shift.numel()}, channel_dim={self.channel_dim}"


def _batch_input(batch, key: str):
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return batch[key]
    return batch[0]  # (x, label, ...) tuples


class FirstStage(nn.Module):
    """Base class of every modality's autoencoder. Subclasses implement ``encode``, ``decode`` and
    ``last_layer``; the normalised-latent interface the diffusion model uses is inherited."""

    def __init__(self, latent_channels: int, channel_dim: int = 1):
        super().__init__()
        self.latent_channels = latent_channels
        self.latent_stats = LatentStatistics(latent_channels, channel_dim)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian | QuantizedPosterior:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output layer (for the GAN's adaptive weight)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        """Autoencoder training pass -> (reconstruction, posterior)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Data -> normalised latent (what the diffusion model is trained on)."""
        posterior = self.encode(x)
        return self.latent_stats.normalize(posterior.sample(generator) if sample else posterior.mode())

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent (e.g. a diffusion sample) -> data."""
        return self.decode(self.latent_stats.denormalize(z))

    @torch.no_grad()
    def estimate_latent_statistics(self, batches: Iterable, max_batches: int | None = None,
                                   per_channel: bool = False, center: bool = True, sample: bool = False,
                                   generator: torch.Generator | None = None, key: str = "x") -> LatentStatistics:
        """Fill ``latent_stats`` from data. ``batches``: a loader or any iterable of tensors, tuples
        (first item is the data) or dicts (``batch[key]``); at most ``max_batches`` are encoded, in eval
        mode, on the module's device."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()

        def latents():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    return
                posterior = self.encode(_batch_input(batch, key).to(device))
                yield (posterior.sample(generator) if sample else posterior.mode()).float()

        try:
            return self.latent_stats.estimate(latents(), per_channel=per_channel, center=center)
        finally:
            self.train(was_training)


def autoencoder_loss(x: torch.Tensor, reconstruction: torch.Tensor, posterior, kl_weight: float = 1e-6,
                     perceptual=None, perceptual_weight: float = 1.0,
                     codebook_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """First-stage objective (Esser et al. 2021; Rombach et al. 2022 App. G), float32 scalars.

    l1 = mean |x − x̂|; rec = l1 + perceptual_weight·mean perceptual(x, x̂) (the term the GAN's adaptive
    weight balances against); kl = KL(q(z|x) ‖ N(0, I)) per item divided by the number of data elements
    per item, so kl_weight keeps LDM's meaning (there both terms are sums per item: 1e-6 for KL-f8);
    or, for a VQ posterior, vq = codebook + commitment loss. total = rec + kl_weight·kl (or
    + codebook_weight·vq). The adversarial term comes from ``shared.first_stage.gan.AdversarialTraining``.
    """
    x, reconstruction = x.float(), reconstruction.float()
    l1 = (x - reconstruction).abs().mean()
    out = {"l1": l1}
    rec = l1
    if perceptual is not None:
        out["perceptual"] = perceptual(x, reconstruction).float().mean()
        rec = rec + perceptual_weight * out["perceptual"]
    out["rec"] = rec
    if hasattr(posterior, "kl"):
        out["kl"] = (posterior.kl().float() / x[0].numel()).mean()
        out["total"] = rec + kl_weight * out["kl"]
    else:
        out["vq"] = posterior.loss.float().mean()
        out["total"] = rec + codebook_weight * out["vq"]
    return out
