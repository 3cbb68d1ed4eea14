"""Adversarial training of a first stage, for data that is an N-d tensor [B, C, *spatial] (N = 1, 2, 3).

The patch discriminator, hinge / non-saturating losses, the adaptive generator weight and the delayed
start follow taming-transformers (Esser et al. 2021, "Taming transformers", §3 and eq. 7), which the LDM
autoencoders use unchanged. ``AdversarialTraining`` bundles them: one call gives the (already weighted)
generator term to add to ``shared.first_stage.autoencoder.autoencoder_loss`` and the discriminator's own loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "batch":
        return _BATCH_NORM[dims](channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'group', 'batch' or 'none', got {kind!r}")


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, pix2pix; taming's NLayerDiscriminator) for 1-D, 2-D or 3-D data.

    Hand-written: no installed library provides it. ``layers`` stride-2 4-wide convolutions (channels
    doubling, capped at 8×), one stride-1 convolution, then a 1-channel stride-1 convolution: one logit
    per overlapping patch (70 px wide for layers=3). LeakyReLU 0.2, no norm after the first conv and
    taming's N(0, 0.02) init. Norm: taming uses BatchNorm (``norm="batch"``); the default here is
    GroupNorm, which does not depend on the batch (tiny or accumulated batches, DDP without SyncBN,
    same behaviour in train and eval). ``norm="none"`` makes every logit strictly patch-local.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3, dims: int = 2,
                 norm: str = "group"):
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        conv, bias = _CONV[dims], norm == "none"
        blocks = [conv(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [conv(channels * prev, channels * mult, 4, stride, 1, bias=bias),
                       _norm(norm, channels * mult, dims), nn.LeakyReLU(0.2, True)]
        blocks.append(conv(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        self.dims = dims
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @property
    def receptive_field(self) -> int:
        """Width (per spatial dim) of the input patch one logit sees."""
        size = 1
        for m in reversed([m for m in self.net if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]):
            size = (size - 1) * m.stride[0] + m.kernel_size[0]
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3 and x.device.type == "cpu":
            # oneDNN's bf16 Conv3d with 4-wide kernels returns a non-finite gradient for about 1 in 20 random
            # inputs (torch 2.13, measured on AVX512-BF16): 3-D discriminators run in fp32 on the CPU
            with torch.autocast("cpu", enabled=False):
                return self.net(x.float())
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))]) (Lim & Ye 2017; taming's hinge_d_loss)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−E[D(x̂)] (Lim & Ye 2017; taming's generator loss)."""
    return -fake_logits.mean()


def vanilla_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """½(E[softplus(−D(x))] + E[softplus(D(x̂))]): the original GAN cross-entropy (Goodfellow et al. 2014)."""
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def vanilla_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """E[softplus(−D(x̂))]: the non-saturating generator loss (Goodfellow et al. 2014, §3)."""
    return F.softplus(-fake_logits).mean()


GAN_LOSSES = {"hinge": (hinge_d_loss, hinge_g_loss), "vanilla": (vanilla_d_loss, vanilla_g_loss)}


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer_weight: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """λ = ‖∇_L rec‖ / (‖∇_L g‖ + 1e-4), L the decoder's last layer (Esser et al. 2021, eq. 7);
    detached and clamped to [0, max_weight]. Both graphs are kept for the caller's backward."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)
    weight = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def disc_factor(step: int, disc_start: int, factor: float = 1.0) -> float:
    """The adversarial terms' factor: 0 before ``disc_start``, ``factor`` from then on (taming's adopt_weight)."""
    return factor if step >= disc_start else 0.0


class AdversarialTraining(nn.Module):
    """The GAN side of first-stage training; holds the discriminator (so it is saved and moved with it).

    ``forward(x, reconstruction, step, last_layer, rec_loss)`` returns
      "generator":     f·disc_weight·λ·g_loss — add it to the reconstruction total;
      "discriminator": f·d_loss on real x and *detached* reconstructions;
    plus detached logs (g_loss, d_weight, disc_factor, logits_real, logits_fake). f = ``disc_factor``.
    The generator term sees the discriminator through detached parameters and the discriminator term
    sees detached reconstructions, so neither loss leaks gradient into the other network: backward both
    (or their sum) and step the autoencoder and discriminator optimizers. λ is the adaptive weight when
    ``adaptive`` and ``rec_loss``/``last_layer`` are given and grad is enabled; without grad (validation)
    it is 0, as in taming. Before ``disc_start`` the generator term is skipped (exact zero) and the
    discriminator loss is 0·d_loss (``active(step)`` lets a loop skip the discriminator step). Real and
    fake go through the discriminator as one batch (with ``norm="batch"`` they share batch statistics).
    """

    def __init__(self, discriminator: nn.Module, disc_start: int = 0, disc_weight: float = 0.5,
                 disc_factor: float = 1.0, loss: str = "hinge", adaptive: bool = True, max_weight: float = 1e4):
        super().__init__()
        if loss not in GAN_LOSSES:
            raise ValueError(f"loss must be one of {sorted(GAN_LOSSES)}, got {loss!r}")
        self.discriminator = discriminator
        self.disc_start, self.disc_weight, self.factor = disc_start, disc_weight, disc_factor
        self.loss, self.adaptive, self.max_weight = loss, adaptive, max_weight
        self.d_loss_fn, self.g_loss_fn = GAN_LOSSES[loss]

    def active(self, step: int) -> bool:
        return disc_factor(step, self.disc_start, self.factor) > 0

    def _frozen_logits(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) with gradient to x only (the discriminator's parameters are detached)."""
        module = getattr(self.discriminator, "module", self.discriminator)  # unwrap DDP
        params = {name: p.detach() for name, p in module.named_parameters()}
        return functional_call(module, params, (x,))

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor, step: int,
                last_layer: torch.Tensor | None = None, rec_loss: torch.Tensor | None = None) -> dict:
        factor = disc_factor(step, self.disc_start, self.factor)
        zero = reconstruction.new_zeros((), dtype=torch.float32)
        g_loss, weight, generator = zero, zero, zero
        if factor > 0:
            g_loss = self.g_loss_fn(self._frozen_logits(reconstruction).float())
            if not self.adaptive:
                weight = torch.ones_like(zero)
            elif last_layer is None or rec_loss is None:
                raise ValueError("adaptive weighting needs last_layer and rec_loss")
            elif torch.is_grad_enabled() and rec_loss.requires_grad and g_loss.requires_grad:
                weight = adaptive_weight(rec_loss, g_loss, last_layer, self.max_weight)
            generator = factor * self.disc_weight * weight * g_loss
        # one discriminator call on [real; fake] (one forward per backward, as DDP wants)
        logits = self.discriminator(torch.cat([x.detach(), reconstruction.detach().to(x.dtype)])).float()
        real_logits, fake_logits = logits.split([x.shape[0], reconstruction.shape[0]])
        discriminator = factor * self.d_loss_fn(real_logits, fake_logits)
        return {"generator": generator, "discriminator": discriminator, "g_loss": g_loss.detach(),
                "d_weight": weight.detach(), "disc_factor": torch.tensor(factor),
                "logits_real": real_logits.detach().mean(), "logits_fake": fake_logits.detach().mean()}
