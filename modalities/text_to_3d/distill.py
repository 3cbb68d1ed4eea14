"""DreamFusion on our own image LDM: a field rendered from random cameras, the render encoded by the prior's
frozen encoder, noised, and the guided denoiser's error pushed back into the field (score distillation,
``shared.diffusion.score_distillation``). The loop follows threestudio's DreamFusion system: view-dependent
prompts, an albedo-only warm-up, then random Lambertian / textureless shading under a light near the camera.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from modalities.image.pipeline import ImagePipeline, encode_prompts, null_condition
from shared.cli.config import build_config
from shared.diffusion.guidance import ClassifierFreeGuidance
from shared.diffusion.score_distillation import (
    TimeAnnealing, safe_gradient, sds_estimate, sds_gradient, sds_loss, x0_weight)

from .cameras import light_directions, sample_cameras, view_suffix
from .render import render


@dataclass
class DistillSettings:
    """Everything one distillation run reads (``configs/sds.yaml`` mirrors it)."""

    steps: int = 600
    views: int = 1                     # cameras per step (the smoothed grid meshes as well with 1 as with 4)
    lr: float = 0.05
    size: int | None = None            # render size; None: the prior's (its image size, SD: 64, resized up)
    ray_samples: int = 48
    guidance_scale: float | None = None  # None: the prior's own (an mldm run 7.5, Stable Diffusion 100)
    space: str = "image"               # image: pull the render towards the decoded x̂₀ (HiFA); latent: DreamFusion's
    weighting: str = "sds"
    grad_clip: float | None = None     # clamp each element of the SDS gradient to [−c, c] (threestudio's grad_clip)
    t_min: float = 0.02
    t_max: float = 0.98
    anneal: str = "none"               # t's top kept high: SDS shapes the whole solid, not its texture
    t_end: float = 0.4
    ambient_only_steps: int = 100      # albedo renders first: colour before shading asks for geometry
    textureless_prob: float = 0.3      # after the warm-up: textureless, else Lambertian
    view_prompts: bool = True          # DreamFusion's ", front view" / ", side view" / ", back view"
    tv_weight: float = 0.1             # total variation of the voxel grid (Plenoxels)
    sparsity_weight: float = 0.01      # mean opacity (fewer floaters)
    opaque_weight: float = 0.0         # entropy of each pixel's opacity: solid or empty, not haze (threestudio)
    eikonal_weight: float = 1.0        # |∇d| = 1 for a signed-distance field (field=sdf; others have no eikonal)
    curvature_weight: float = 0.01     # mean |Δd| of a signed-distance field (Neuralangelo): smooth, not speckled
    elevation: tuple = (-10.0, 45.0)
    distance: float = 3.0
    fov_y: float = 45.0
    light_max_angle: float = 30.0
    background: tuple = dataclass_field(default_factory=lambda: (0.0, 0.0, 0.0))


class ImagePrior:
    """The frozen image LDM as score distillation uses it: renders in, guided x̂₀ out. Built from an mldm
    image run's pipeline (its autoencoder, text encoder and EMA denoiser). ``StableDiffusionPrior`` is the
    same interface over a local Stable Diffusion folder."""

    default_guidance_scale = 7.5       # our small prior's extrapolation leaves its data above ~10 (README)

    def __init__(self, pipeline):
        self.first_stage, self.denoiser, self.conditioner = pipeline.first_stage, pipeline.denoiser, pipeline.conditioner
        self.device = pipeline.device
        self.image_size = self.render_size = int(pipeline.cfg.data.size)
        for module in (self.first_stage, self.denoiser, self.conditioner):
            if module is not None:
                module.requires_grad_(False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Renders in [−1, 1] -> the normalised latents the denoiser was trained on (gradient kept)."""
        return self.first_stage.encode_latent(images) if self.first_stage is not None else images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in [−1, 1]."""
        return self.first_stage.decode_latent(latents).float().clamp(-1, 1) if self.first_stage is not None else latents

    def guided(self, prompts: list[str], scale: float):
        """(x̂₀ denoiser with classifier-free guidance at ``scale``, the prompts' condition)."""
        cond = encode_prompts(self.conditioner, prompts, self.device)
        uncond = null_condition(self.conditioner, len(prompts), self.device)
        return ClassifierFreeGuidance(self.denoiser, scale, uncond), cond


def make_optimizer(field: torch.nn.Module, settings: DistillSettings) -> torch.optim.Adam:
    return torch.optim.Adam(field.parameters(), lr=settings.lr, betas=(0.9, 0.99), eps=1e-15)


def distill(prior: ImagePrior, field: torch.nn.Module, prompt: str, settings: DistillSettings, seed: int = 0,
            on_step: Callable[[int, float], None] | None = None, start_step: int = 0,
            optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None) -> list[float]:
    """Optimise ``field`` in place for ``prompt`` from ``start_step`` to ``settings.steps``; returns the SDS
    surrogate losses of those steps. Every draw comes from ``generator`` (default: seeded with ``seed``), so a
    run resumed with the field, optimizer and generator state saved after a step continues bit for bit.
    ``on_step(step, loss)`` runs after each optimizer step."""
    generator = torch.Generator().manual_seed(seed) if generator is None else generator
    optimizer = make_optimizer(field, settings) if optimizer is None else optimizer
    times = TimeAnnealing(settings.t_min, settings.t_max, settings.anneal, settings.t_end)
    size = settings.size or prior.render_size
    scale = prior.default_guidance_scale if settings.guidance_scale is None else settings.guidance_scale
    losses = []
    for step in range(start_step, settings.steps):
        cameras = sample_cameras(settings.views, generator, elevation=settings.elevation,
                                 distance=(settings.distance,) * 2, fov_y=(settings.fov_y,) * 2)
        prompts = [prompt + (view_suffix(float(a)) if settings.view_prompts else "") for a in cameras.azimuth]
        shading = _shading(step, settings, generator)
        out = render(field, cameras.to(prior.device), size, size, num_samples=settings.ray_samples,
                     generator=generator, shading=shading,
                     light=light_directions(cameras, settings.light_max_angle, generator).to(prior.device),
                     background=settings.background)
        images = _to_prior_size(out["rgb"] * 2 - 1, prior.image_size)
        guided, cond = prior.guided(prompts, scale)
        t = times(len(images), step / max(settings.steps - 1, 1), generator).to(prior.device)
        loss = _sds_loss(prior, guided, images, t, generator, cond, settings)
        total = loss + settings.sparsity_weight * out["opacity"].mean()
        if settings.opaque_weight:
            total = total + settings.opaque_weight * _entropy(out["opacity"]).mean()
        if settings.tv_weight and hasattr(field, "total_variation"):
            total = total + settings.tv_weight * field.total_variation()
        if settings.eikonal_weight and hasattr(field, "eikonal"):
            total = total + settings.eikonal_weight * field.eikonal()
        if settings.curvature_weight and hasattr(field, "curvature"):
            total = total + settings.curvature_weight * field.curvature()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def _sds_loss(prior: ImagePrior, guided, images, t, generator, cond, settings: DistillSettings) -> torch.Tensor:
    """The SDS surrogate on the render: its gradient is w(t)(ε̂ − ε) through the encoder (``latent``) or the
    same pull towards the decoded x̂₀ on the pixels (``image``; no encoder Jacobian, no encoder backward)."""
    if settings.space == "latent":
        z = prior.encode(images)
        noise = torch.randn(z.shape, generator=generator).to(z)
        return sds_loss(z, sds_gradient(guided, z, t, noise, cond, settings.weighting, settings.grad_clip))
    if settings.space != "image":
        raise ValueError(f"sds.space must be 'image' or 'latent', got {settings.space!r}")
    with torch.no_grad():
        z = prior.encode(images)
    noise = torch.randn(z.shape, generator=generator).to(z)
    x0, alpha, sigma = sds_estimate(guided, z, t, noise, cond)
    weight = x0_weight(settings.weighting, alpha, sigma)
    return sds_loss(images, safe_gradient(weight * (images.detach() - prior.decode(x0)), settings.grad_clip))


def _to_prior_size(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Renders resized (bilinearly, differentiably) to the prior's input size, as threestudio does."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)


def _entropy(opacity: torch.Tensor) -> torch.Tensor:
    p = opacity.clamp(1e-3, 1 - 1e-3)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _shading(step: int, settings: DistillSettings, generator: torch.Generator) -> str:
    if step < settings.ambient_only_steps:
        return "albedo"
    return "textureless" if float(torch.rand((), generator=generator)) < settings.textureless_prob else "lambertian"


def load_prior(run_dir: Path, device) -> ImagePrior:
    """The image run at ``run_dir`` as a prior (its own config.yaml decides the parts)."""
    cfg = build_config("sample", [f"run_dir={run_dir}"])
    return ImagePrior(ImagePipeline(cfg, Path(run_dir), torch.device(device)))
