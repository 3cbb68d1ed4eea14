"""The latent-diffusion stage: denoising score matching on a frozen first stage's latents, for every prior
of every modality (image and SDF latents, a point cloud's global latent and latent points, a molecule's
per-atom latents).

A modality supplies :class:`LatentData`: the posterior of every example, encoded once; a fresh draw from it
each step, normalised as the prior sees it, with the space it lives in (``None``: plain tensors); and the
examples' conditions. The stage owns the rest: classifier-free-guidance dropout (one path,
``drop_condition``), the time draw, the loss and its reduction per item of the space (a molecule's loss is
averaged over its (n − 1)·3 + n·k degrees of freedom, not over atom rows).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from shared.conditioning.conditioners import TextCondition, TextEncoder, drop_condition
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.losses import DenoisingScoreMatching, mean_per_item
from shared.first_stage.autoencoder import FirstStage
from shared.training.stages import as_condition

Drop = Callable[[object, object], object]  # drop(cond, null): CFG dropout of a batch's conditions


class LatentData(Protocol):
    """What a latent prior trains on (``shared.contract``: a modality's part)."""

    def num_examples(self) -> int: ...

    def batch(self, indices: torch.Tensor, device) -> dict: ...  # the examples' encoded posteriors

    def draw(self, batch: dict, random) -> tuple[torch.Tensor, object]: ...  # (normalised latent, space or None)

    def condition(self, batch: dict, z: torch.Tensor, drop: Drop) -> object: ...  # ``drop`` applied where it can

    def trained_modules(self) -> dict[str, nn.Module]: ...  # trained with the denoiser (a label embedding)


class LatentDiffusionStage:
    """DSM on ``latents`` with CFG dropout ``cfg_dropout``; ``preview(task, out_dir)`` samples with the EMA
    weights."""

    def __init__(self, denoiser: Denoiser, latents: LatentData, loss: DenoisingScoreMatching,
                 cfg_dropout: float = 0.1, preview: Callable | None = None):
        self.denoiser, self.latents, self.loss = denoiser, latents, loss
        self.cfg_dropout, self.preview_fn = cfg_dropout, preview

    def modules(self):
        return {"denoiser": self.denoiser, **self.latents.trained_modules()}

    def param_groups(self):  # frozen parameters (a video model's spatial layers) stay out of the optimizer
        return {"main": [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]}

    def ema_modules(self):
        return list(self.modules())

    def num_examples(self):
        return self.latents.num_examples()

    def batch(self, indices, device):
        return self.latents.batch(indices, device)

    def losses(self, batch, random, step):
        z, space = self.latents.draw(batch, random)
        items = space.num_items(z) if space is not None else len(z)

        def drop(cond, null):  # the step's shard-invariant uniforms, drawn only where a condition can be dropped
            return drop_condition(cond, self.cfg_dropout, random.rand(items).cpu(), null=null)

        cond = self.latents.condition(batch, z, drop)
        t = random.draw(self.loss.time_sampler, items, self.denoiser.schedule).to(z.device)
        per_element = self.loss(self.denoiser, z, cond, space=space, t=t, **self.loss.global_draws(random, z),
                                generator=random.generator)  # the self-conditioning coin, same on every rank
        loss = per_element.mean() if space is None else mean_per_item(space, per_element, z).mean()
        return {"main": loss}, {"loss": float(loss.detach())}

    def finalize(self):
        pass

    @torch.no_grad()
    def preview(self, step, out_dir: Path):
        if self.preview_fn is not None:
            self.preview_fn(self, out_dir)


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

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"label_encoder": self.label_encoder} if self.label_encoder is not None else {}


class EncodedLatents:
    """Tensor data (images, shapes) through a frozen ``first_stage`` (pixels as they are without one): the
    posterior mean and std of every example, encoded once; a reparameterised draw each step, normalised by
    the first stage's latent statistics."""

    def __init__(self, first_stage: FirstStage | None, data: torch.Tensor, to_model: Callable, conditions: Conditions,
                 encode_batch: int = 256, device="cpu"):
        self.first_stage, self.conditions = first_stage, conditions
        self.mean, self.std = self._encode(data, to_model, encode_batch, torch.device(device))

    @torch.no_grad()
    def _encode(self, data, to_model, batch, device):
        if self.first_stage is None:
            return to_model(data), None
        self.first_stage.to(device).eval().requires_grad_(False)
        means, stds = [], []
        for i in range(0, len(data), batch):
            posterior = self.first_stage.encode(to_model(data[i:i + batch]).to(device))
            means.append(posterior.mode().float().cpu())
            stds.append(posterior.std.float().cpu() if hasattr(posterior, "std") else None)
        return torch.cat(means), (torch.cat(stds) if stds[0] is not None else None)

    def num_examples(self):
        return len(self.mean)

    def batch(self, indices, device):
        return {"mean": self.mean[indices].to(device), "index": self.conditions.index[indices],
                "std": self.std[indices].to(device) if self.std is not None else None}

    def draw(self, batch, random):
        z = batch["mean"] if batch["std"] is None else batch["mean"] + batch["std"] * random.randn_like(batch["mean"])
        return (self.first_stage.latent_stats.normalize(z) if self.first_stage is not None else z), None

    def condition(self, batch, z, drop: Drop):
        return self.conditions(drop(batch["index"], self.conditions.null_index), z.device)

    def trained_modules(self):
        return self.conditions.trained_modules()
