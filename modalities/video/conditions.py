"""The condition of a video: its prompt and, optionally, known frames (image-to-video and autoregressive
extension, Emu Video's factorisation: the known frames' latents enter the denoiser beside the noisy ones).

``frames`` [B, T, C, H, W] holds the normalised latents of the known frames (zeros elsewhere) and ``known``
[B, T] which frames they are. Classifier-free-guidance dropout replaces the prompt and forgets the frames
together, so guidance acts over both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.conditioning.text_encoder import TextCondition


@dataclass
class VideoCondition:
    text: TextCondition
    frames: torch.Tensor | None = None
    known: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.text)

    @property
    def tokens(self):
        return self.text.tokens

    @property
    def mask(self):
        return self.text.mask

    @property
    def pooled(self):
        return self.text.pooled

    def to(self, device=None, dtype: torch.dtype | None = None) -> VideoCondition:
        frames = None if self.frames is None else self.frames.to(device, dtype)
        known = None if self.known is None else self.known.to(device)
        return VideoCondition(self.text.to(device, dtype), frames, known)

    def where(self, drop: torch.Tensor, null) -> VideoCondition:
        """Per item: the null prompt and no known frames where ``drop`` is True."""
        text = self.text.where(drop, null.text if isinstance(null, VideoCondition) else null)
        if self.known is None:
            return VideoCondition(text)
        keep = ~drop.to(self.known.device)
        known = self.known & keep[:, None]
        return VideoCondition(text, self.frames * known[:, :, None, None, None].to(self.frames.dtype), known)

    def context_input(self, like: torch.Tensor) -> torch.Tensor:
        """[B·T, C + 1, H, W] for ``like`` [B, T, C, H, W]: the known latents and a known-frame mask per frame,
        the backbone's context input (zeros when no frame is known)."""
        return context_input(self.frames, self.known, like)


def context_input(frames: torch.Tensor | None, known: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if known is None:
        return like.new_zeros(like.shape[0] * like.shape[1], like.shape[2] + 1, *like.shape[3:])
    known = known.to(like.dtype)[:, :, None, None, None].expand(*like.shape[:2], 1, *like.shape[3:])
    return torch.cat([frames.to(like.dtype) * known, known], dim=2).flatten(0, 1)


def with_known_frames(text: TextCondition, latents: torch.Tensor, count: torch.Tensor) -> VideoCondition:
    """The first ``count[i]`` frames of video i known (``latents`` [B, T, C, H, W]); count 0: text only."""
    known = torch.arange(latents.shape[1], device=latents.device)[None] < count.to(latents.device)[:, None]
    return VideoCondition(text, latents * known[:, :, None, None, None].to(latents.dtype), known)
