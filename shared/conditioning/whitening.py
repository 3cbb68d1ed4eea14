"""Whitening of pooled text embeddings over a caption set (BERT-whitening: Su et al. 2021, "Whitening sentence
representations for better semantics and faster retrieval").

A sentence encoder puts captions that differ in one antonym close together: MiniLM's pooled embeddings of "a red
circle moving left" and "... moving right" are 0.27 apart, "... moving up" 0.52 and "a blue circle moving left"
0.69. A network reading them learns the small differences slowly. Whitened over the training captions, every
direction they vary along has the same spread, so each attribute is as easy to read as the others.

y = (x − μ) · V diag((λ + ε)^-½) Vᵀ · s: μ and the eigenpairs (λ, V) of the captions' covariance, directions
with λ ≈ 0 (outside the captions' span: a sentence encoder has more dimensions than a tiny data set has captions)
dropped, ε = ``shrinkage`` · mean λ, and s so that the fitted captions' root-mean-square norm is 1 (the
encoder's own embeddings have norm 1). Until fitted it is the identity. The buffers are saved with the model.
"""
from __future__ import annotations

import torch
from torch import nn


class EmbeddingWhitening(nn.Module):
    def __init__(self, dim: int, shrinkage: float = 0.01):
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor) -> "EmbeddingWhitening":
        """``embeddings`` [N, D]: one per distinct caption the model trains on (the null prompt included)."""
        x = embeddings.detach().double().cpu()
        if x.ndim != 2 or len(x) < 2 or not torch.isfinite(x).all():
            raise ValueError(f"whitening needs finite embeddings [N >= 2, D], got shape {tuple(x.shape)}")
        mean = x.mean(0)
        eigenvalues, vectors = torch.linalg.eigh((x - mean).T @ (x - mean) / len(x))
        keep = eigenvalues > 1e-9 * eigenvalues.max().clamp(min=1e-30)
        eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
        scales = (eigenvalues + self.shrinkage * eigenvalues.mean()).rsqrt()
        matrix = vectors * scales @ vectors.T
        matrix = matrix / ((x - mean) @ matrix).square().sum(1).mean().sqrt()
        self.mean.copy_(mean.to(self.mean))
        self.matrix.copy_(matrix.to(self.matrix))
        return self

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return (pooled - self.mean.to(pooled.dtype)) @ self.matrix.to(pooled.dtype)
