"""Conditioning: text, class labels and classifier-free-guidance dropout.

A conditioner turns a batch of captions or labels into the ``cond`` a backbone receives through the
denoiser contract ``denoiser(x_t, t, cond)``:

- text → :class:`TextCondition` (from a frozen :class:`TextEncoder`) — ``tokens`` [B, L, D] + ``mask``
  [B, L] for cross-attention (``UNet2DConditionModel``'s ``encoder_hidden_states`` /
  ``encoder_attention_mask``), and ``pooled`` [B, D] for adaLN / time-embedding conditioning (DiT);
- class labels → a learned embedding [B, D] (DiT's label embedder, with one extra null class).

The unconditional input of classifier-free guidance (Ho & Salimans 2022) is the encoding of the
empty prompt "" for text (as in Stable Diffusion) and the null class for labels; training replaces
the condition by it with probability ``dropout`` (:func:`drop_condition`). At sampling time
``conditioner.null(B)`` is the ``uncond`` of ``shared.diffusion.guidance.ClassifierFreeGuidance``.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import nn

from shared.diffusion.broadcast import append_dims
from shared.conditioning.text_encoder import TextCondition, TextEncoder, default_text_encoder_path

__all__ = ["TextCondition", "TextEncoder", "default_text_encoder_path", "drop_condition", "ClassLabelEncoder",
           "Conditioner", "TextConditioner", "LabelConditioner"]


def drop_condition(cond, p: float, uniforms: torch.Tensor, *, null):
    """Classifier-free-guidance dropout (Ho & Salimans 2022): each item's condition becomes the null
    condition with probability ``p``; the one dropout path of every modality's training.

    ``uniforms``: one U(0, 1) draw per item, the item dropped where it is below ``p`` (training passes the
    step's shard-invariant ``random.rand(n)``, so dropout is exact on resume and across process counts).
    ``cond`` is a label tensor (``null``: the null class index), an embedding tensor (``null``: a tensor
    broadcastable to one item), or any condition with ``where(drop, null)`` (a :class:`TextCondition`,
    ``null`` one or B items with tokens, mask and pooled replaced together; a modality's own condition type).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    drop = torch.as_tensor(uniforms) < p
    if not isinstance(cond, torch.Tensor):  # (a tensor's own .where has the other meaning)
        return cond.where(drop, null)
    drop = append_dims(drop.to(cond.device), cond.ndim)
    null = torch.as_tensor(null, dtype=cond.dtype, device=cond.device)
    return torch.where(drop, null, cond)


def uniform_draws(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n U(0, 1) draws on the generator's device (CPU without one)."""
    return torch.rand(n, generator=generator, device=generator.device if generator is not None else "cpu")


class ClassLabelEncoder(nn.Module):
    """Learned class embedding with one extra null class at index ``num_classes`` (DiT's LabelEmbedder)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)  # as DiT

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long()
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null)")
        return self.embedding(labels)

    def null(self, batch_size: int) -> torch.Tensor:
        return self(torch.full((batch_size,), self.null_index, dtype=torch.long))


class Conditioner(Protocol):
    """What the training/sampling engine needs from a conditioner."""

    dim: int

    def encode(self, batch, generator: torch.Generator | None = None, train: bool = False): ...

    def null(self, batch_size: int): ...


class TextConditioner(nn.Module):
    """Captions → :class:`TextCondition`; with ``train`` each item is replaced by the "" encoding with
    probability ``dropout``. The backbone consumes ``tokens`` + ``mask`` by cross-attention or
    ``pooled`` by adaLN. Holds no trainable parameters."""

    def __init__(self, encoder: TextEncoder | None = None, dropout: float = 0.1):
        super().__init__()
        self.encoder, self.dropout = encoder if encoder is not None else TextEncoder(), dropout

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, captions: Sequence[str], generator: torch.Generator | None = None,
               train: bool = False) -> TextCondition:
        cond = self.encoder(captions)
        if train and self.dropout > 0:
            cond = drop_condition(cond, self.dropout, uniform_draws(len(cond), generator), null=self.encoder.null(1))
        return cond

    def null(self, batch_size: int) -> TextCondition:
        return self.encoder.null(batch_size)


class LabelConditioner(nn.Module):
    """Integer labels → learned embedding [B, dim]; with ``train`` each label becomes the null class with
    probability ``dropout``. The embedding is trainable (optimise it with the backbone); the backbone
    consumes it by adaLN (DiT) or as a one-token ``encoder_hidden_states`` (``cond[:, None]``)."""

    def __init__(self, num_classes: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.encoder, self.dropout = ClassLabelEncoder(num_classes, dim), dropout

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, labels: torch.Tensor, generator: torch.Generator | None = None,
               train: bool = False) -> torch.Tensor:
        labels = torch.as_tensor(labels).long()
        if train and self.dropout > 0:
            labels = drop_condition(labels, self.dropout, uniform_draws(len(labels), generator),
                                    null=self.encoder.null_index)
        return self.encoder(labels)

    def null(self, batch_size: int) -> torch.Tensor:
        return self.encoder.null(batch_size)
