"""A local diffusers Stable Diffusion folder as the score-distillation prior (threestudio's
``stable-diffusion-guidance``, DreamFusion's setting): its UNet, VAE, CLIP text encoder, tokenizer and
scheduler read from disk, nothing fetched. The scheduler's ᾱ become the core's ``DiscreteSchedule`` and the
UNet sits behind the core's x̂₀ denoiser contract, so ``sds_estimate`` and classifier-free guidance are the
same code as for an mldm run.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modalities.image.autoencoder import ImageAutoencoderKL
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.guidance import ClassifierFreeGuidance
from shared.diffusion.parameterization import EpsilonPrediction, SamplePrediction, VPrediction
from shared.diffusion.schedules import DiscreteSchedule
from shared.errors import ConfigError

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PARAMETERIZATIONS = {"epsilon": EpsilonPrediction, "v_prediction": VPrediction, "sample": SamplePrediction}


class StableDiffusionUNet(nn.Module):
    """``UNet2DConditionModel`` as a core backbone: (latent, discrete timestep, CLIP token states) -> its
    prediction, in the UNet's own precision."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.dtype
        return self.unet(x.to(dtype), time.to(dtype), encoder_hidden_states=cond.to(dtype)).sample


def half_precision(device: torch.device) -> torch.dtype:
    """float16 where the device computes it (CUDA), float32 elsewhere (a CPU would emulate it)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ConfigError(f"pretrained={folder}: not a folder (a diffusers Stable Diffusion folder, as written by "
                          f"save_pretrained, is expected)")
    missing = [part for part in PARTS if not (folder / part).is_dir()]
    if missing:
        raise ConfigError(f"pretrained={folder}: no {', '.join(missing)} subfolder(s); a Stable Diffusion folder "
                          f"holds {', '.join(PARTS)}")


class StableDiffusionPrior:
    """The ``ImagePrior`` interface (encode / decode / guided) over a local Stable Diffusion folder. Renders are
    drawn at ``render_size`` and resized to ``image_size`` before encoding (threestudio renders 64² for 512²)."""

    default_guidance_scale = 100.0     # DreamFusion's and threestudio's for Stable Diffusion
    sampling_guidance_scale = 7.5      # its pipelines' default (what VSD would guide with)

    def __init__(self, folder: str | Path, device, dtype: torch.dtype | None = None, render_size: int = 64):
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        folder, self.device = Path(folder), torch.device(device)
        check_folder(folder)
        dtype = dtype or half_precision(self.device)
        load = {"torch_dtype": dtype, "local_files_only": True}
        try:
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", **load)
            self.first_stage = ImageAutoencoderKL.from_pretrained(str(folder / "vae"), **load)
            self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **load)
            self.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"pretrained={folder}: cannot load it as Stable Diffusion ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:300]})") from None
        if unet.config.addition_embed_type is not None:
            raise ConfigError(f"pretrained={folder}: its UNet takes added conditions "
                              f"({unet.config.addition_embed_type}, as SDXL's does); only Stable Diffusion 1.x/2.x "
                              f"UNets are supported")
        prediction = scheduler.config.prediction_type
        if prediction not in PARAMETERIZATIONS:
            raise ConfigError(f"pretrained={folder}: scheduler prediction_type {prediction!r} is not one of "
                              f"{sorted(PARAMETERIZATIONS)}")
        schedule = DiscreteSchedule(scheduler.alphas_cumprod)
        self.denoiser = Denoiser(StableDiffusionUNet(unet), schedule, PARAMETERIZATIONS[prediction]())
        for module in (self.denoiser, self.first_stage, self.text_encoder):
            module.to(self.device).eval().requires_grad_(False)
        self.image_size = unet.config.sample_size * self.first_stage.factor
        self.render_size = min(render_size, self.image_size)
        self._embeddings: dict[str, torch.Tensor] = {}

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """CLIP's last hidden states of each prompt, padded to the tokenizer's length as SD's pipelines do;
        each prompt encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            with torch.no_grad():
                states = self.text_encoder(ids)[0]
            self._embeddings.update(zip(missing, states))
        return torch.stack([self._embeddings[p] for p in prompts])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1] -> SD's scaled latents (gradient kept)."""
        return self.first_stage.encode_latent(images).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode_latent(latents).float().clamp(-1, 1)

    def guided(self, prompts: list[str], scale: float):
        """(x̂₀ denoiser with classifier-free guidance at ``scale`` against the empty prompt, the condition)."""
        uncond = self.embed([""]).expand(len(prompts), -1, -1)
        return ClassifierFreeGuidance(self.denoiser, scale, uncond), self.embed(prompts)
