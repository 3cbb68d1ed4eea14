"""DreamFusion on our own image LDM: a field rendered from random cameras, the render encoded by the prior's
frozen encoder, noised, and the guided denoiser's error pushed back into the field (score distillation,
``shared.diffusion.score_distillation``). The loop follows threestudio's DreamFusion system: view-dependent
prompts, an albedo-only warm-up, then random Lambertian / textureless shading under a light near the camera.
With ``distillation=vsd`` the error is taken against a camera-conditioned copy of the prior that learns the
renders as it goes (ProlificDreamer, ``vsd``) instead of against the injected noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from modalities.image.pipeline import ImagePipeline, encode_prompts, null_condition
from shared.cli.config import build_config
from shared.diffusion.guidance import ClassifierFreeGuidance
from shared.diffusion.score_distillation import (
    TimeAnnealing, safe_gradient, sds_estimate, sds_gradient, sds_loss, vsd_gradient, x0_weight)
from shared.errors import ConfigError

from .cameras import light_directions, sample_cameras, view_suffix
from .render import render
from .vsd import ParticleScore

DISTILLATIONS = ("sds", "vsd")


@dataclass
class DistillSettings:
    """Everything one distillation run reads (``configs/sds.yaml`` mirrors it)."""

    steps: int = 600
    distillation: str = "sds"          # sds (DreamFusion) | vsd (ProlificDreamer: ε̂ minus the renders' own score)
    vsd_lr: float = 1.0e-4             # Adam's learning rate on VSD's copy of the prior (and its camera MLP)
    views: int = 1                     # cameras per step (the smoothed grid meshes as well with 1 as with 4)
    lr: float = 0.05
    size: int | None = None            # render size; None: the prior's (its image size, SD: 64, resized up)
    ray_samples: int = 48
    guidance_scale: float | None = None  # None: the prior's own for SDS (an mldm run 7.5, Stable Diffusion 100);
                                         # for VSD the run's sampling scale (ProlificDreamer: VSD guides as sampling)
    space: str = "image"               # image: pull the render towards the decoded x̂₀ (HiFA); latent: DreamFusion's
    weighting: str = "fantasia3d"      # w(t) = √ᾱ(1 − ᾱ) (Fantasia3D): the best meshes of the 15-prompt ablations
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

    def __post_init__(self):
        if self.distillation not in DISTILLATIONS:
            raise ConfigError(f"sds.distillation={self.distillation!r}: expected one of {'|'.join(DISTILLATIONS)}")


class ImagePrior:
    """The frozen image LDM as score distillation uses it: renders in, guided x̂₀ out. Built from an mldm
    image run's pipeline (its autoencoder, text encoder and EMA denoiser). ``StableDiffusionPrior`` is the
    same interface over a local Stable Diffusion folder."""

    default_guidance_scale = 7.5       # SDS's; our small prior's extrapolation leaves its data above ~10 (README)

    def __init__(self, pipeline):
        self.first_stage, self.denoiser, self.conditioner = pipeline.first_stage, pipeline.denoiser, pipeline.conditioner
        self.device = pipeline.device
        self.image_size = self.render_size = int(pipeline.cfg.data.size)
        self.sampling_guidance_scale = float(OmegaConf.select(pipeline.cfg, "guidance.scale", default=1.0))
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


def guidance_scale(prior, settings: DistillSettings) -> float:
    """``sds.guidance_scale``, or by default the prior's SDS scale (SDS needs strong guidance, DreamFusion) or,
    for VSD, the scale the prior samples with (ProlificDreamer: 7.5 for Stable Diffusion, its sampling scale)."""
    if settings.guidance_scale is not None:
        return settings.guidance_scale
    if settings.distillation == "vsd":
        return prior.sampling_guidance_scale
    return prior.default_guidance_scale


def make_particle(prior, settings: DistillSettings) -> ParticleScore | None:
    """VSD's trainable copy of the prior (None for SDS). Needs an mldm prior: a Stable Diffusion UNet is too
    large to copy on a CPU, and its LoRA (ProlificDreamer's) is not built here."""
    if settings.distillation == "sds":
        return None
    if not isinstance(prior, ImagePrior) or prior.conditioner is None:
        raise ConfigError("sds.distillation=vsd needs a text-conditioned mldm prior (run_dir=RUN); a Stable "
                          "Diffusion folder (pretrained=) supports sds only")
    return ParticleScore(prior.denoiser, prior.conditioner.dim).to(prior.device)


def trained_modules(field: torch.nn.Module, particle: ParticleScore | None) -> torch.nn.Module:
    """What a distillation step updates, as one module (its state is what a checkpoint keeps)."""
    return field if particle is None else torch.nn.ModuleDict({"field": field, "particle": particle})


def make_optimizer(field: torch.nn.Module, settings: DistillSettings,
                   particle: ParticleScore | None = None) -> torch.optim.Adam:
    groups = [{"params": list(field.parameters()), "lr": settings.lr}]
    if particle is not None:
        groups.append({"params": list(particle.parameters()), "lr": settings.vsd_lr})
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def distill(prior: ImagePrior, field: torch.nn.Module, prompt: str, settings: DistillSettings, seed: int = 0,
            on_step: Callable[[int, float], None] | None = None, start_step: int = 0,
            optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None,
            particle: ParticleScore | None = None) -> list[float]:
    """Optimise ``field`` in place for ``prompt`` from ``start_step`` to ``settings.steps``; returns the SDS
    surrogate losses of those steps; VSD needs ``particle`` (``make_particle``), trained alongside. Every draw
    comes from ``generator`` (default: seeded with ``seed``), so a run resumed with the field (and particle),
    optimizer and generator state saved after a step continues bit for bit.
    ``on_step(step, loss)`` runs after each optimizer step."""
    if (settings.distillation == "vsd") != (particle is not None):
        raise ValueError(f"sds.distillation={settings.distillation!r} with{'' if particle is None else 'out'} a "
                         f"particle score: VSD trains one (make_particle), SDS has none")
    generator = torch.Generator().manual_seed(seed) if generator is None else generator
    optimizer = make_optimizer(field, settings, particle) if optimizer is None else optimizer
    times = TimeAnnealing(settings.t_min, settings.t_max, settings.anneal, settings.t_end)
    size = settings.size or prior.render_size
    scale = guidance_scale(prior, settings)
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
        if particle is None:
            loss = _sds_loss(prior, guided, images, t, generator, cond, settings)
            total = loss
        else:
            loss, latents = _vsd_loss(prior, guided, particle, images, t, generator, cond, cameras, settings)
            total = loss + particle.loss(latents, cond, cameras, generator)
        total = total + settings.sparsity_weight * out["opacity"].mean()
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


def _vsd_loss(prior: ImagePrior, guided, particle: ParticleScore, images, t, generator, cond, cameras,
              settings: DistillSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(the VSD surrogate on the render, the render's latents for the particle's own training): the gradient
    w(t)(ε̂ − ε̂_φ) through the encoder (``latent``), or, on the pixels (``image``), the render pulled towards
    the decoded x̂₀ by x0_weight times (decoded x̂₀_φ − decoded x̂₀)."""
    with torch.set_grad_enabled(settings.space == "latent"):
        z = prior.encode(images)
    noise = torch.randn(z.shape, generator=generator).to(z)
    particle_cond = particle.condition(cond, cameras)
    if settings.space == "latent":
        gradient = vsd_gradient(guided, particle, z, t, noise, cond, particle_cond, settings.weighting,
                                settings.grad_clip)
        return sds_loss(z, gradient), z.detach()
    if settings.space != "image":
        raise ValueError(f"sds.space must be 'image' or 'latent', got {settings.space!r}")
    x0, alpha, sigma = sds_estimate(guided, z, t, noise, cond)
    x0_particle, _, _ = sds_estimate(particle, z, t, noise, particle_cond)
    with torch.no_grad():
        pull = x0_weight(settings.weighting, alpha, sigma) * (prior.decode(x0_particle) - prior.decode(x0))
    return sds_loss(images, safe_gradient(pull, settings.grad_clip)), z


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
