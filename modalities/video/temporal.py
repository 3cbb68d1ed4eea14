"""Temporal layers that turn an image network into a video network ("Align your latents", Blattmann et al. 2023).

After a spatial layer's output h (frames as a batch, [B·T, C, H, W]) a :class:`TemporalMixer` computes
α·h + (1 − α)·temporal(h): ``temporal`` is a temporal attention block (diffusers' ``TransformerTemporalModel``
with sinusoidal frame positions, cross-attending to the pooled text so the temporal layers see the prompt)
and/or a 3D-conv residual block (diffusers' ``TemporalConvLayer``), α = sigmoid(mix) is diffusers'
``AlphaBlender``. Both temporal blocks end in a zeroed projection, so temporal(h) = h exactly at initialisation
and the mixer is the identity: the video network starts as the image network applied frame by frame. With
``prompt_tokens`` a :class:`PromptAttention` (zeroed output too) lets every position of every frame read the
prompt's tokens, where the direction words are.

:func:`attach_after` puts mixers behind a network's own layers with forward hooks, so the spatial network
keeps its module names (an image checkpoint loads into it unchanged) and its code stays diffusers'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.models.resnet import AlphaBlender, TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

TEMPORAL_LAYERS = ("attention", "conv")


def check_layers(layers) -> tuple[str, ...]:
    layers = tuple(layers)
    unknown = [name for name in layers if name not in TEMPORAL_LAYERS]
    if unknown or not layers:
        raise ValueError(f"temporal layers {list(layers)}: choose one or both of {list(TEMPORAL_LAYERS)}")
    return layers


@dataclass
class FrameContext:
    """What the temporal layers need besides the features, set by the network's forward for one call:
    the number of frames per video, the pooled text per video ([B, D]; ``None``: no text) and the known frames."""
    frames: int = 1
    text: torch.Tensor | None = None
    known_frames: torch.Tensor | None = None  # the context projection's input (``VideoCondition.context_input``)
    tokens: tuple | None = None  # the prompt's (tokens [B, L, D], mask [B, L]) for the prompt attention


class PromptAttention(nn.Module):
    """Cross-attention from every token of a video (all frames) to its prompt's tokens, output zeroed at
    initialisation. The temporal layers need the direction words, and the pooled embedding hardly carries them
    (MiniLM: cosine 0.965 between "... moving left" and "... moving right"); a token carries one whole word."""

    def __init__(self, width: int, text_dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.attention = nn.MultiheadAttention(width, heads, kdim=text_dim, vdim=text_dim, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``tokens`` [B, N, W] (one video's frames and patches), ``text`` [B, L, D], ``mask`` [B, L] (True: a
        real token)."""
        padding = None if mask is None else ~mask.to(torch.bool)
        attended, _ = self.attention(self.norm(tokens), text, text, key_padding_mask=padding, need_weights=False)
        return tokens + attended


class TemporalMixer(nn.Module):
    """α·h + (1 − α)·temporal(h) over the frames of each video; the identity at initialisation."""

    def __init__(self, channels: int, layers=TEMPORAL_LAYERS, heads: int = 4, text_dim: int | None = None,
                 max_frames: int = 32, groups: int = 32, prompt_tokens: bool = False):
        super().__init__()
        layers, groups = check_layers(layers), math.gcd(groups, channels)
        self.attention = TransformerTemporalModel(
            num_attention_heads=heads, attention_head_dim=channels // heads, in_channels=channels,
            norm_num_groups=groups, cross_attention_dim=text_dim, double_self_attention=text_dim is None,
            positional_embeddings="sinusoidal", num_positional_embeddings=max_frames,
        ) if "attention" in layers else None
        if self.attention is not None:
            nn.init.zeros_(self.attention.proj_out.weight)
            nn.init.zeros_(self.attention.proj_out.bias)
        self.conv = TemporalConvLayer(channels, norm_num_groups=groups) if "conv" in layers else None  # zeroed last conv
        self.prompt = PromptAttention(channels, text_dim, heads) if prompt_tokens else None
        self.blend = AlphaBlender(alpha=0.0, merge_strategy="learned")  # α = sigmoid(0) = ½: α·h + (1 − α)·h is h

    def forward(self, h: torch.Tensor, context: FrameContext) -> torch.Tensor:
        temporal = h
        if self.conv is not None:
            temporal = self.conv(temporal, num_frames=context.frames)
        if self.attention is not None:
            text = None
            if context.text is not None:  # one token per video, repeated for each spatial position's sequence
                text = context.text.to(h.dtype)[:, None].repeat_interleave(h.shape[-2] * h.shape[-1], 0)
            temporal = self.attention(temporal, encoder_hidden_states=text, num_frames=context.frames).sample
        if self.prompt is not None and context.tokens is not None:
            rows, channels, height, width = temporal.shape
            per_video = temporal.unflatten(0, (rows // context.frames, context.frames)).permute(0, 1, 3, 4, 2)
            per_video = self.prompt(per_video.reshape(len(per_video), -1, channels), *context.tokens)
            temporal = per_video.reshape(-1, context.frames, height, width, channels).permute(0, 1, 4, 2, 3).flatten(0, 1)
        return self.blend(h, temporal)


def _mix_output(layer, args, output):
    mixer, context = layer.__dict__["_temporal_mixer"], layer.__dict__["_frame_context"]
    if isinstance(output, tuple):  # diffusers transformers called with return_dict=False
        return (mixer(output[0], context),) + output[1:]
    if hasattr(output, "sample"):
        output.sample = mixer(output.sample, context)
        return output
    return mixer(output, context)


def attach_after(spatial: list[tuple[nn.Module, int]], context: FrameContext, **mixer_options) -> nn.ModuleList:
    """A :class:`TemporalMixer` behind each (spatial layer, its output channels), applied by a forward hook; returns the
    mixers (register them on the network so they are trained and saved). The hook finds its mixer and
    context on the layer itself (unregistered attributes: the layer's state dict is unchanged), so a deep copy
    of the network runs its own copies."""
    mixers = nn.ModuleList()
    for layer, channels in spatial:
        mixer = TemporalMixer(channels, **mixer_options)
        object.__setattr__(layer, "_temporal_mixer", mixer)
        object.__setattr__(layer, "_frame_context", context)
        layer.register_forward_hook(_mix_output)
        mixers.append(mixer)
    return mixers
