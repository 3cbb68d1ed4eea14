"""The video first stage: the image autoencoder frame by frame, its decoder aligned in time.

"Align your latents" (Blattmann et al. 2023, §3.1.1) keeps the image encoder (the latent distribution the
image model learned must not move) and fine-tunes the decoder with temporal layers against a video
discriminator, because frames decoded independently flicker. Here a 3D-conv temporal mixer
(``modalities.video.temporal``, diffusers' ``TemporalConvLayer`` + ``AlphaBlender``) follows every decoder
resnet; it is the identity at initialisation, so the video decoder starts as the image decoder.
Videos are [B, T, C, H, W]; latents [B, T, c, h, w], normalised by the image autoencoder's statistics.
"""
from __future__ import annotations

import torch
from torch import nn

from modalities.video.temporal import FrameContext, attach_after
from shared.first_stage.autoencoder import FirstStage


def per_frame(function, x: torch.Tensor) -> torch.Tensor:
    """``function`` on the frames of ``x`` [B, T, ...] as one batch."""
    return function(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class VideoAutoencoder(nn.Module):
    """``image`` (a ``FirstStage`` whose decoder is diffusers' ``Decoder``) with temporal mixers in its decoder.
    The encoder and latent statistics stay frozen; ``decoder_parameters`` are what fine-tuning trains."""

    def __init__(self, image: FirstStage, layers=("conv",), heads: int = 4, max_frames: int = 32):
        super().__init__()
        self.image = image
        self.image.requires_grad_(False)
        decoder = _diffusers_decoder(image)
        self.context = FrameContext()
        spatial = [(resnet, resnet.out_channels) for block in [decoder.mid_block, *decoder.up_blocks]
                   for resnet in block.resnets]
        groups = decoder.conv_norm_out.num_groups
        self.temporal = attach_after(spatial, self.context, layers=layers, heads=heads, max_frames=max_frames,
                                     groups=groups)
        decoder.requires_grad_(True)

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(_diffusers_decoder(self.image).parameters()) + list(self.temporal.parameters())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.context.frames = z.shape[1]
        return per_frame(self.image.decode, z)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self.image.encode_latent, x)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(per_frame(self.image.latent_stats.denormalize, z))

    def last_layer(self) -> torch.Tensor:
        return self.image.last_layer()


class FrameByFrame(nn.Module):
    """The image autoencoder on each frame alone (the decoder a video run has before its decoder stage)."""

    def __init__(self, image: FirstStage):
        super().__init__()
        self.image = image

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self.image.encode_latent, x)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return per_frame(self.image.decode_latent, z)


def _diffusers_decoder(image: FirstStage) -> nn.Module:
    for name in ("vae", "vq"):
        if hasattr(image, name):
            return getattr(image, name).decoder
    raise TypeError(f"{type(image).__name__}: a temporal decoder needs a diffusers autoencoder (ImageAutoencoderKL "
                    f"or ImageVQAutoencoder)")
