"""Video denoising backbones: an image backbone aligned in time ("Align your latents", Blattmann et al. 2023).

A temporal layer follows every spatial layer and starts as the identity, so at initialisation the video
model is the image model applied frame by frame; the spatial layers stay frozen unless ``train_spatial``
(Stable Video Diffusion fine-tunes everything). Raw-backbone signature ``backbone(x, time, cond)`` with
``x`` latents [B, T, C, H, W] and one condition per video (``cond.tokens`` [B, L, D], ``cond.mask`` [B, L]).
"""
from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from modalities.image.backbones import UNetBackbone


class MaskedCrossAttention(AttnProcessor2_0):
    """Cross-attention that skips padded text tokens. diffusers' ``UNetMotionModel.forward`` takes no
    ``encoder_attention_mask`` (its blocks do), so the backbone hands the mask to these processors per call,
    as the additive bias ``UNet2DConditionModel`` builds from it."""

    def __init__(self):
        super().__init__()
        self.bias: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None and self.bias is not None:
            attention_mask = self.bias
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


class VideoUNetBackbone(nn.Module):
    """The image U-Net (``modalities.image.backbones.UNetBackbone``) with diffusers' temporal transformers
    (``UNetMotionModel.from_unet2d``) after every spatial block. diffusers initialises their output
    projections randomly; here they start at zero, which makes each temporal block the identity."""

    def __init__(self, image: UNetBackbone, motion_heads: int = 4, max_frames: int = 32, train_spatial: bool = False):
        super().__init__()
        config = image.unet.config
        adapter = MotionAdapter(block_out_channels=tuple(config.block_out_channels),
                                motion_layers_per_block=config.layers_per_block,
                                motion_norm_num_groups=config.norm_num_groups, motion_num_attention_heads=motion_heads,
                                motion_max_seq_length=max_frames, use_motion_mid_block=config.mid_block_type is not None)
        self.unet = UNetMotionModel.from_unet2d(image.unet, adapter)
        for name, parameter in self.unet.named_parameters():
            if ".motion_modules." in f".{name}" and ".proj_out." in name:
                nn.init.zeros_(parameter)
        self.cross_attention = {}
        for name, module in self.unet.attn_processors.items():
            if "motion_modules" not in name and name.endswith("attn2.processor"):
                self.cross_attention[name] = MaskedCrossAttention()
        self.unet.set_attn_processor({name: self.cross_attention.get(name, processor)
                                      for name, processor in self.unet.attn_processors.items()})
        if not train_spatial:
            self.unet.freeze_unet2d_params()

    def temporal_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.unet.named_parameters() if "motion_modules" in name]

    def forward(self, x, time, cond):
        batch, frames = x.shape[:2]
        tokens = cond.tokens.to(x.dtype).repeat_interleave(frames, 0)
        bias = None if cond.mask is None else \
            ((1 - cond.mask.to(x.dtype)) * -10000.0).repeat_interleave(frames, 0).unsqueeze(1)
        for processor in self.cross_attention.values():
            processor.bias = bias
        try:
            out = self.unet(x.transpose(1, 2), time, encoder_hidden_states=tokens).sample  # [B, C, T, H, W]
        finally:
            for processor in self.cross_attention.values():
                processor.bias = None
        return out.transpose(1, 2)
