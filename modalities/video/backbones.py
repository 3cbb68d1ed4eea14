"""Video denoising backbones: an image backbone aligned in time ("Align your latents", Blattmann et al. 2023).

A temporal layer follows every spatial layer (``modalities.video.temporal``) and starts as the identity, so at
initialisation the video model is exactly the image model applied frame by frame; the spatial layers stay
frozen unless ``train_spatial`` (Stable Video Diffusion fine-tunes everything). With ``context_frames`` the
known frames of a :class:`~modalities.video.conditions.VideoCondition` enter through a zero-initialised
projection added to the first layer's output (Emu Video conditions on the image by concatenation; a separate
projection keeps the frozen input layer the image model's).

Raw-backbone signature ``backbone(x, time, cond)``: ``x`` latents [B, T, C, H, W], ``time`` [B], ``cond`` a
``VideoCondition`` or a ``TextCondition`` (one prompt per video).
"""
from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.resnet import AlphaBlender, TemporalConvLayer
from torch import nn

from modalities.blocks import DiTBlock, timestep_embedding
from modalities.image.backbones import DiTBackbone, UNetBackbone
from modalities.video.conditions import context_input
from modalities.video.temporal import TEMPORAL_LAYERS, FrameContext, PromptAttention, attach_after, check_layers
from shared.conditioning.whitening import EmbeddingWhitening


FRAME_POSITIONS = ("sinusoidal", "rotary")  # added to the temporal attention's input, or RoPE on its queries/keys
# what a DiT temporal attention attends over: the frames at one patch (factorised, Latte / "Align your latents")
# or every patch of every frame of the video (full space-time attention, CogVideoX: Yang et al. 2024)
SPANS = ("frames", "video")


def _frames_context(cond, x: torch.Tensor) -> torch.Tensor:
    return context_input(getattr(cond, "frames", None), getattr(cond, "known", None), x)


def _temporal_view(whitening: EmbeddingWhitening | None, pooled: torch.Tensor) -> torch.Tensor:
    """The pooled prompt as the temporal layers read it: whitened over the training captions where asked."""
    return pooled if whitening is None else whitening(pooled)


def _zero_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2 if stride == 1 else 0)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _add_context(layer, args, output):
    projection, context = layer.__dict__["_context_projection"], layer.__dict__["_frame_context"]
    if context.known_frames is None:  # called outside the video forward
        return output
    return output + projection(context.known_frames.to(output.dtype))


class VideoUNetBackbone(nn.Module):
    """The image U-Net (``UNetBackbone``, diffusers' ``UNet2DConditionModel``) with a temporal mixer after every
    resnet and spatial transformer; frames run as a batch through the spatial layers."""

    def __init__(self, image: UNetBackbone, layers=TEMPORAL_LAYERS, heads: int = 4, max_frames: int = 32,
                 train_spatial: bool = False, context_frames: bool = False, prompt_tokens: bool = False,
                 frame_positions: str = "sinusoidal", span: str = "frames", frame_embedding: bool = False,
                 text_whitening: bool = False):
        super().__init__()
        if frame_embedding:
            raise ValueError("frame_embedding=true is the DiT's (its tokens take a per-frame vector before the first "
                             "block); the U-Net's temporal attention adds its own frame positions")
        if span != "frames":
            raise ValueError(f"span={span!r}: the U-Net's temporal attention (diffusers' TransformerTemporalModel) "
                             "attends over each position's frames; span=video is the DiT's")
        if frame_positions != "sinusoidal":
            raise ValueError(f"frame_positions={frame_positions!r}: the U-Net's temporal attention (diffusers' "
                             "TransformerTemporalModel) adds sinusoidal positions; rotary is the DiT's")
        self.unet = image.unet
        if not train_spatial:
            self.unet.requires_grad_(False)
        self.context = FrameContext()
        spatial = []
        for block in [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]:
            spatial += [(resnet, resnet.out_channels) for resnet in block.resnets]
            spatial += [(attention, attention.config.in_channels) for attention in getattr(block, "attentions", [])]
        self.temporal = attach_after(spatial, self.context, layers=check_layers(layers), heads=heads,
                                     text_dim=self.unet.config.cross_attention_dim, max_frames=max_frames,
                                     groups=self.unet.config.norm_num_groups, prompt_tokens=prompt_tokens)
        self.text_whitening = EmbeddingWhitening(self.unet.config.cross_attention_dim) if text_whitening else None
        self.context_projection = None
        if context_frames:
            channels = self.unet.config.in_channels
            self.context_projection = _zero_conv(channels + 1, self.unet.config.block_out_channels[0], 3)
            object.__setattr__(self.unet.conv_in, "_context_projection", self.context_projection)
            object.__setattr__(self.unet.conv_in, "_frame_context", self.context)
            self.unet.conv_in.register_forward_hook(_add_context)

    def forward(self, x, time, cond):
        batch, frames = x.shape[:2]
        self.context.frames, self.context.text = frames, _temporal_view(self.text_whitening, cond.pooled)
        self.context.tokens = (cond.tokens, cond.mask)
        self.context.known_frames = _frames_context(cond, x) if self.context_projection is not None else None
        try:
            out = self.unet(x.flatten(0, 1), time.repeat_interleave(frames),
                            encoder_hidden_states=cond.tokens.to(x.dtype).repeat_interleave(frames, 0),
                            encoder_attention_mask=None if cond.mask is None else cond.mask.repeat_interleave(frames, 0))
        finally:
            self.context.text = self.context.tokens = self.context.known_frames = None
        return out.sample.unflatten(0, (batch, frames))


class TemporalDiTLayer(nn.Module):
    """After a DiT block's attention over the patches of each frame, this attends over the frames at each patch
    (factorised space-time attention) or over every patch of the video (``span="video"``), an adaLN-Zero block
    that sees time and text through its c, and/or convolves along the frames; blended with the spatial output by a
    learned α, the identity at initialisation."""

    def __init__(self, width: int, heads: int, layers=TEMPORAL_LAYERS, max_frames: int = 32, mlp_ratio: float = 4.0,
                 text_dim: int | None = None, frame_positions: str = "sinusoidal", span: str = "frames"):
        super().__init__()
        layers = check_layers(layers)
        if span not in SPANS:
            raise ValueError(f"span={span!r}: choose one of {list(SPANS)}")
        self.span = span
        self.attention = DiTBlock(width, heads, mlp_ratio) if "attention" in layers else None
        self.conv = TemporalConvLayer(width, norm_num_groups=math.gcd(32, width)) if "conv" in layers else None
        if frame_positions not in FRAME_POSITIONS:
            raise ValueError(f"frame_positions={frame_positions!r}: choose one of {list(FRAME_POSITIONS)}")
        self.rotary = frame_positions == "rotary"
        if self.rotary:  # only the kind in use is built (non-persistent: checkpoints hold neither)
            cos, sin = get_1d_rotary_pos_embed(width // heads, max_frames, use_real=True)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        else:
            self.register_buffer("positions", timestep_embedding(torch.arange(max_frames), width), persistent=False)
        self.prompt = PromptAttention(width, text_dim, heads) if text_dim else None
        self.blend = AlphaBlender(alpha=0.0, merge_strategy="learned")

    def forward(self, tokens: torch.Tensor, c: torch.Tensor, frames: int, grid: int, text=None) -> torch.Tensor:
        """``text``: the prompt's (tokens [B, L, D], mask [B, L]) per video, for the prompt attention."""
        temporal = tokens
        rows, patches, width = tokens.shape  # rows = videos · frames
        if self.conv is not None:
            as_maps = temporal.transpose(1, 2).reshape(rows, width, grid, grid)
            temporal = self.conv(as_maps, num_frames=frames).flatten(2).transpose(1, 2)
        if self.attention is not None:
            temporal = self._attend(temporal, c, frames)
        if self.prompt is not None:
            per_video = self.prompt(temporal.reshape(rows // frames, frames * patches, width), *text)
            temporal = per_video.reshape(rows, patches, width)
        return self.blend(tokens, temporal)

    def _attend(self, tokens: torch.Tensor, c: torch.Tensor, frames: int) -> torch.Tensor:
        """The attention block over each patch's frames (``frames``) or over the whole video (``video``); every
        token carries its frame's position (its patch's is in the image tokens)."""
        rows, patches, width = tokens.shape
        videos = rows // frames
        c_video = c.unflatten(0, (videos, frames))[:, 0]
        if self.span == "video":
            sequences, per_frame = tokens.reshape(videos, frames * patches, width), patches
        else:
            sequences = tokens.unflatten(0, (videos, frames)).transpose(1, 2).reshape(videos * patches, frames, width)
            c_video, per_frame = c_video.repeat_interleave(patches, 0), 1
        if self.rotary:  # relative frame offsets with their sign, which text-dependent queries can select
            rotary = tuple(table[:frames].repeat_interleave(per_frame, 0)
                           for table in (self.rotary_cos, self.rotary_sin))
            sequences = self.attention(sequences, c_video, rotary=rotary)
        else:
            positions = self.positions[:frames].repeat_interleave(per_frame, 0).to(tokens.dtype)
            sequences = self.attention(sequences, c_video, positions=positions)
        if self.span == "video":
            return sequences.reshape(rows, patches, width)
        return sequences.unflatten(0, (videos, patches)).transpose(1, 2).reshape(rows, patches, width)


class FramePromptEmbedding(nn.Module):
    """A per-frame vector from (the frame's index, the prompt), added to every token of the frame before the first
    block; zero at initialisation. Where the shape is in frame k of "... moving right" is a product of the text
    and the index (the data is symmetric under time reversal with the direction flipped), which an MLP on both
    represents directly; the image tokens carry no frame index, and adaLN adds text and time rather than
    multiplying them."""

    def __init__(self, text_dim: int, width: int, max_frames: int):
        super().__init__()
        self.register_buffer("frame_positions", timestep_embedding(torch.arange(max_frames), width), persistent=False)
        self.text = nn.Linear(text_dim, width)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, pooled: torch.Tensor, frames: int) -> torch.Tensor:
        """``pooled`` [B, D] -> [B·T, 1, W], one vector per frame to broadcast over its patches."""
        text = self.text(pooled).repeat_interleave(frames, 0)
        index = self.frame_positions[:frames].to(text.dtype).repeat(len(pooled), 1)
        return self.mlp(torch.cat([text, index], dim=1))[:, None]


class VideoDiTBackbone(nn.Module):
    """The image DiT (``DiTBackbone``) with a :class:`TemporalDiTLayer` after every block."""

    def __init__(self, image: DiTBackbone, layers=TEMPORAL_LAYERS, heads: int = 4, max_frames: int = 32,
                 train_spatial: bool = False, context_frames: bool = False, prompt_tokens: bool = False,
                 frame_positions: str = "sinusoidal", span: str = "frames", frame_embedding: bool = False,
                 text_whitening: bool = False):
        super().__init__()
        self.image = image
        if not train_spatial:
            self.image.requires_grad_(False)
        width = image.positions.shape[-1]
        text_dim = image.cond_proj.in_features if prompt_tokens else None
        self.temporal = nn.ModuleList(TemporalDiTLayer(width, heads, layers, max_frames, text_dim=text_dim,
                                                       frame_positions=frame_positions, span=span)
                                       for _ in image.blocks)
        # the temporal layers' own view of the prompt: the frozen image projection was trained where direction
        # words carried no signal (a single frame shows none), so it need not keep them
        self.temporal_text = nn.Linear(image.cond_proj.in_features, width)
        self.text_whitening = EmbeddingWhitening(image.cond_proj.in_features) if text_whitening else None
        in_channels = image.embed.in_channels
        self.context_projection = _zero_conv(in_channels + 1, width, image.patch, stride=image.patch) \
            if context_frames else None
        self.frame_embedding = FramePromptEmbedding(image.cond_proj.in_features, width, max_frames) \
            if frame_embedding else None

    def forward(self, x, time, cond):
        batch, frames = x.shape[:2]
        x_frames = x.flatten(0, 1)
        tokens = self.image.tokens(x_frames)
        if self.context_projection is not None:
            tokens = tokens + self.context_projection(_frames_context(cond, x)).flatten(2).transpose(1, 2)
        pooled = cond.pooled.to(x.dtype)
        temporal_view = _temporal_view(self.text_whitening, pooled)
        if self.frame_embedding is not None:
            tokens = tokens + self.frame_embedding(temporal_view, frames)
        c = self.image.conditioning(time.repeat_interleave(frames), pooled.repeat_interleave(frames, 0))
        c_temporal = c + self.temporal_text(temporal_view.repeat_interleave(frames, 0))
        text = (cond.tokens.to(x.dtype), cond.mask)
        for block, temporal in zip(self.image.blocks, self.temporal):
            tokens = temporal(block(tokens, c), c_temporal, frames, self.image.grid, text)
        return self.image.output(tokens, c, *x.shape[-2:]).unflatten(0, (batch, frames))


def temporal_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """What a frozen-spatial video backbone trains: its temporal layers, their text projection, the context
    projection."""
    parts = [backbone.temporal, getattr(backbone, "temporal_text", None), backbone.context_projection,
             getattr(backbone, "frame_embedding", None)]
    parts = [part for part in parts if part is not None]
    return [p for part in parts for p in part.parameters()]
