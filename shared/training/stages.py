"""The two training stages of a latent diffusion model, for any modality whose data is a tensor.

``AutoencoderStage``: reconstruction + KL/VQ + adversarial loss (Esser et al. 2021; Rombach et al.
2022, App. G); latent statistics are estimated from the data when it ends. ``LatentDiffusionStage``:
denoising score matching on the frozen first stage's normalised latents (pixels for the baseline),
with CFG dropout of the condition. Modalities supply data tensors and a ``preview`` callback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from shared.first_stage.autoencoder import FirstStage, autoencoder_loss
from shared.conditioning.conditioners import TextCondition, TextEncoder, drop_condition
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.losses import DenoisingScoreMatching


class AutoencoderStage:

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
        if hasattr(posterior, "std"):  # KL: reparameterised sample with shard-invariant noise
            z = posterior.mean + posterior.std * random.randn_like(posterior.mean)
        else:
            z = posterior.mode()
        reconstruction = self.autoencoder.decode(z)
        terms = autoencoder_loss(x, reconstruction, posterior, self.kl_weight)
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss"] = logs["total"]
        if not self.adversarial.active(step):  # before disc_start: no discriminator work at all
            return {"main": terms["total"]}, logs
        adversarial = self.adversarial(x, reconstruction, step, self.autoencoder.last_layer(), terms["rec"])
        logs.update(g_loss=float(adversarial["g_loss"]), d_loss=float(adversarial["discriminator"]),
                    d_weight=float(adversarial["d_weight"]))
        return {"main": terms["total"] + adversarial["generator"], "discriminator": adversarial["discriminator"]}, logs

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


def as_condition(embedding: torch.Tensor) -> TextCondition:
    """A label (or any vector) embedding as a one-token condition, so every backbone reads one type."""
    return TextCondition(tokens=embedding[:, None], mask=torch.ones(len(embedding), 1, dtype=torch.bool,
                                                                      device=embedding.device), pooled=embedding)


class Conditions:
    """Per-example conditions: captions through a frozen text encoder (encoded once per distinct
    caption), or labels through a learned embedding with a null class."""

    def __init__(self, captions: list[str] | None = None, labels: torch.Tensor | None = None,
                 text_encoder: TextEncoder | None = None, label_encoder: nn.Module | None = None):
        self.label_encoder = label_encoder
        if captions is not None:
            vocabulary = sorted(set(captions))
            lookup = {c: i for i, c in enumerate(vocabulary)}
            self.index = torch.tensor([lookup[c] for c in captions])
            self.table = TextCondition.cat([text_encoder(vocabulary), text_encoder.null(1)])  # last row: null
            self.null_index = len(vocabulary)
            self.vocabulary = vocabulary
        else:
            self.index, self.null_index, self.vocabulary = labels.long(), label_encoder.null_index, None

    def __call__(self, index: torch.Tensor, device) -> TextCondition:
        if self.label_encoder is not None:
            return as_condition(self.label_encoder(index.to(device)))
        return self.table.index(index.cpu()).to(device)


class LatentDiffusionStage:

    def __init__(self, denoiser: Denoiser, first_stage: FirstStage | None, data: torch.Tensor, to_model: Callable,
                 conditions: Conditions, loss: DenoisingScoreMatching, cfg_dropout: float = 0.1,
                 preview: Callable | None = None, encode_batch: int = 256, device="cpu"):
        self.denoiser, self.first_stage, self.conditions, self.loss = denoiser, first_stage, conditions, loss
        self.cfg_dropout, self.preview_fn = cfg_dropout, preview
        self.mean, self.std = self._latents(data, to_model, encode_batch, torch.device(device))

    @torch.no_grad()
    def _latents(self, data, to_model, batch, device):
        """Posterior mean and std of every example, once (the first stage is frozen)."""
        if self.first_stage is None:
            return to_model(data), None
        self.first_stage.to(device).eval().requires_grad_(False)
        means, stds = [], []
        for i in range(0, len(data), batch):
            posterior = self.first_stage.encode(to_model(data[i:i + batch]).to(device))
            means.append(posterior.mode().float().cpu())
            stds.append(posterior.std.float().cpu() if hasattr(posterior, "std") else None)
        return torch.cat(means), (torch.cat(stds) if stds[0] is not None else None)

    def modules(self):
        modules = {"denoiser": self.denoiser}
        if self.conditions.label_encoder is not None:
            modules["label_encoder"] = self.conditions.label_encoder
        return modules

    def param_groups(self):
        return {"main": [p for m in self.modules().values() for p in m.parameters()]}

    def ema_modules(self):
        return list(self.modules())

    def num_examples(self):
        return len(self.mean)

    def batch(self, indices, device):
        return {"mean": self.mean[indices].to(device), "index": self.conditions.index[indices],
                "std": self.std[indices].to(device) if self.std is not None else None}

    def latent(self, batch, random):
        z = batch["mean"] if batch["std"] is None else batch["mean"] + batch["std"] * random.randn_like(batch["mean"])
        return self.first_stage.latent_stats.normalize(z) if self.first_stage is not None else z

    def losses(self, batch, random, step):
        z = self.latent(batch, random)
        index = drop_condition(batch["index"], self.cfg_dropout, random.rand(len(batch["index"])).cpu(),
                               null=self.conditions.null_index)
        cond = self.conditions(index, z.device)
        t = random.draw(self.loss.time_sampler, len(z), self.denoiser.schedule)
        loss = self.loss(self.denoiser, z, cond, t=t, **self.loss.global_draws(random, z),
                         generator=random.generator).mean()
        return {"main": loss}, {"loss": float(loss.detach())}

    def finalize(self):
        pass

    @torch.no_grad()
    def preview(self, step, out_dir: Path):
        if self.preview_fn is not None:
            self.preview_fn(self, out_dir)
