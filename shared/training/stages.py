"""The first-stage training of a latent diffusion model, for any modality whose data is a tensor.

``AutoencoderStage``: reconstruction + KL/VQ + adversarial loss (Esser et al. 2021; Rombach et al.
2022, App. G); latent statistics are estimated from the data when it ends. The second stage, latent
diffusion, is ``shared.training.latent_diffusion`` (every modality's priors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from shared.first_stage.autoencoder import FirstStage, autoencoder_loss
from shared.conditioning.conditioners import TextCondition


class FirstStageTask:
    """What every first-stage training shares: one module, ``autoencoder``, one optimizer and no EMA (LDM uses
    its first stage as trained). A modality's own first stage (point clouds, SDFs, molecules) subclasses it
    with ``num_examples``, ``batch``, ``losses``, ``finalize`` (its latent statistics) and ``preview``."""

    def __init__(self, autoencoder: nn.Module):
        self.autoencoder = autoencoder

    def modules(self):
        return {"autoencoder": self.autoencoder}

    def param_groups(self):
        return {"main": list(self.autoencoder.parameters())}

    def ema_modules(self):
        return []


class AutoencoderStage:
    """A tensor modality's first stage with its discriminator (PatchGAN from ``disc_start`` on)."""

    def __init__(self, autoencoder: FirstStage, adversarial: nn.Module, data: torch.Tensor,
                 to_model: Callable, kl_weight: float = 1e-6, preview: Callable | None = None,
                 stats_batch: int = 256):
        self.autoencoder, self.adversarial, self.data, self.to_model = autoencoder, adversarial, data, to_model
        self.kl_weight, self.preview_fn, self.stats_batch = kl_weight, preview, stats_batch

    def modules(self):
        return {"autoencoder": self.autoencoder, "adversarial": self.adversarial}

    def param_groups(self):
        return {"main": list(self.autoencoder.parameters()),
                "discriminator": list(self.adversarial.discriminator.parameters())}

    def ema_modules(self):
        return []  # the first stage is used as trained (as in LDM)

    def num_examples(self):
        return len(self.data)

    def batch(self, indices, device):
        return {"x": self.to_model(self.data[indices]).to(device)}

    def losses(self, batch, random, step):
        x = batch["x"]
        posterior = self.autoencoder.encode(x)
        reconstruction = self.autoencoder.decode(posterior_draw(posterior, random))
        terms = autoencoder_loss(x, reconstruction, posterior, self.kl_weight)
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss"] = logs["total"]
        if not self.adversarial.active(step):  # before disc_start: no discriminator work at all
            return {"main": terms["total"]}, logs
        return with_adversarial(self.adversarial, x, reconstruction, step, self.autoencoder.last_layer(),
                                terms["rec"], terms["total"], logs)

    @torch.no_grad()
    def finalize(self):
        device = next(self.autoencoder.parameters()).device
        chunks = (self.to_model(self.data[i:i + self.stats_batch]).to(device)
                  for i in range(0, len(self.data), self.stats_batch))
        self.autoencoder.estimate_latent_statistics(chunks)

    @torch.no_grad()
    def preview(self, step, out_dir: Path):
        if self.preview_fn is not None:
            x = self.to_model(self.data[:16]).to(next(self.autoencoder.parameters()).device)
            self.preview_fn(torch.cat([x, self.autoencoder(x, sample=False)[0]]), out_dir)


def posterior_draw(posterior, random):
    """A KL posterior's reparameterised sample with the step's shard-invariant noise; a VQ posterior's mode."""
    if hasattr(posterior, "std"):
        return posterior.mean + posterior.std * random.randn_like(posterior.mean)
    return posterior.mode()


def with_adversarial(adversarial: nn.Module, x, reconstruction, step: int, last_layer, rec_loss, total, logs: dict):
    """The losses of a first-stage step with its GAN terms (``AdversarialTraining``), and their logs."""
    terms = adversarial(x, reconstruction, step, last_layer, rec_loss)
    logs.update(g_loss=float(terms["g_loss"]), d_loss=float(terms["discriminator"].detach()),
                d_weight=float(terms["d_weight"]))
    return {"main": total + terms["generator"], "discriminator": terms["discriminator"]}, logs


def as_condition(embedding: torch.Tensor) -> TextCondition:
    """A label (or any vector) embedding as a one-token condition, so every backbone reads one type."""
    return TextCondition(tokens=embedding[:, None], mask=torch.ones(len(embedding), 1, dtype=torch.bool,
                                                                      device=embedding.device), pooled=embedding)
