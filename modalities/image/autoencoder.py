"""Image first stages: diffusers' ``AutoencoderKL`` and ``VQModel`` behind the ``FirstStage`` contract.

Images are [B, C, H, W] (diffusers' convention: values in [-1, 1]); latents are [B, c, H/f, W/f] with
f = 2^(len(block_out_channels) − 1). The models are built from config kwargs (any diffusers argument
passes through); up/down block types default to plain ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``.
diffusers' ``scaling_factor`` config entry is never used: latent statistics live in ``latent_stats``.
Inputs are cast to the wrapped model's dtype (a bf16 latent decodes with an fp32 model, and vice versa).
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, VQModel

from shared.first_stage.autoencoder import DiagonalGaussian, FirstStage, QuantizedPosterior


def _diffusers_config(block_out_channels, config: dict) -> dict:
    """Tuples for list-valued options (hydra hands ListConfigs) and default block types."""
    config = {k: tuple(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v
              for k, v in config.items()}
    blocks = len(block_out_channels)
    config.setdefault("down_block_types", ("DownEncoderBlock2D",) * blocks)
    config.setdefault("up_block_types", ("UpDecoderBlock2D",) * blocks)
    config["block_out_channels"] = tuple(block_out_channels)
    return config


class ImageAutoencoderKL(FirstStage):
    """KL-regularised image autoencoder (Rombach et al. 2022, 'KL-f'), wrapping ``diffusers.AutoencoderKL``."""

    def __init__(self, in_channels: int = 3, latent_channels: int = 4,
                 block_out_channels=(32, 64, 64), layers_per_block: int = 1, norm_num_groups: int = 16,
                 **diffusers_kwargs):
        super().__init__(latent_channels)
        diffusers_kwargs.setdefault("out_channels", in_channels)
        self.vae = AutoencoderKL(**_diffusers_config(block_out_channels, dict(
            in_channels=in_channels,
            latent_channels=latent_channels, layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, **diffusers_kwargs)))

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> ImageAutoencoderKL:
        """Wrap a saved diffusers AutoencoderKL (e.g. a local Stable Diffusion VAE); its config's
        scaling/shift (or per-channel latents_mean/std) become the latent statistics."""
        vae = AutoencoderKL.from_pretrained(path, **kwargs)
        c = vae.config
        model = cls.__new__(cls)
        FirstStage.__init__(model, c.latent_channels)
        model.vae = vae
        stats = model.latent_stats
        if c.latents_mean is not None and c.latents_std is not None:
            stats.shift.copy_(torch.tensor(c.latents_mean))
            stats.scale.copy_(c.scaling_factor / torch.tensor(c.latents_std))
        else:
            stats.shift.fill_(c.shift_factor or 0.0)
            stats.scale.fill_(c.scaling_factor)
        stats.estimated.fill_(True)
        return model

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        # diffusers' own DiagonalGaussianDistribution (logvar already clamped to the same range)
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return DiagonalGaussian(dist.mean, dist.logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self.vae.dtype)).sample

    def last_layer(self) -> torch.Tensor:
        return self.vae.decoder.conv_out.weight


class ImageVQAutoencoder(FirstStage):
    """VQ-regularised image autoencoder (van den Oord et al. 2017; Esser et al. 2021; LDM 'VQ-f'),
    wrapping ``diffusers.VQModel``. The latent is the quantized ``vq_embed_dim``-channel map.

    diffusers' quantizer defaults to taming's legacy loss, ‖sg[z_q] − z‖² + β‖z_q − sg[z]‖², which puts
    β on the codebook term; ``legacy_commitment=False`` (default) uses the paper's
    ‖sg[z] − z_q‖² + β‖z − sg[z_q]‖² (codebook + β·commitment).
    ``decode`` quantizes its input (a no-op on codebook entries; it snaps diffusion samples onto the
    codebook, as LDM does); the training pass ``forward`` decodes the straight-through latent directly.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, num_vq_embeddings: int = 256,
                 vq_embed_dim: int | None = None, block_out_channels=(32, 64, 64), layers_per_block: int = 1,
                 norm_num_groups: int = 16, beta: float = 0.25, legacy_commitment: bool = False,
                 **diffusers_kwargs):
        super().__init__(vq_embed_dim or latent_channels)
        diffusers_kwargs.setdefault("out_channels", in_channels)
        self.vq = VQModel(**_diffusers_config(block_out_channels, dict(
            in_channels=in_channels,
            latent_channels=latent_channels, num_vq_embeddings=num_vq_embeddings, vq_embed_dim=vq_embed_dim,
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, **diffusers_kwargs)))
        self.vq.quantize.beta = beta
        self.vq.quantize.legacy = legacy_commitment

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vq.config.block_out_channels) - 1)

    @property
    def codebook(self) -> torch.Tensor:
        """[num_vq_embeddings, vq_embed_dim]."""
        return self.vq.quantize.embedding.weight

    def encode(self, x: torch.Tensor) -> QuantizedPosterior:
        h = self.vq.encode(x.to(self.vq.dtype)).latents  # pre-quantization (after quant_conv)
        quantized, loss, (_, _, indices) = self.vq.quantize(h)
        b, _, height, width = h.shape
        return QuantizedPosterior(quantized, loss, indices.reshape(b, height, width))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(z.to(self.vq.dtype)).sample  # quantizes z first

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        return self.vq.decode(posterior.mode(), force_not_quantize=True).sample, posterior

    def last_layer(self) -> torch.Tensor:
        return self.vq.decoder.conv_out.weight
