"""`mldm sample` / `mldm evaluate` for images: rebuild the trained model from a run directory, sample with
any core sampler and classifier-free guidance, export, and judge with the data's metric (``modality.judge``:
the shapes2d judge, or primitive_views' for the text-to-3D prior)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modalities.image.components import (build_conditioner, build_dataset, build_denoiser, build_first_stage,
                                         caption_vocabulary, latent_shape, load_images, to_model)
from modalities.image.editing import EditStart, edit_start
from modalities.image.export import chain_frames, export_image_samples, load_image_samples
from modalities.image.metrics import evaluate_samples
from shared.diffusion.guidance import Inpainting, sdedit_start
from shared.diffusion.draws import draw_randn
from shared.generation.chain import chain_trajectory
from shared.generation.generate import generate, sample_latent
from shared.generation.likelihood import NLLTerm
from shared.conditioning.conditioners import ClassLabelEncoder
from shared.training.stages import as_condition
from shared.training.checkpoint import load_frozen_first_stage, load_stage_weights


def encode_prompts(conditioner, prompts: list[str], device) -> object:
    if isinstance(conditioner, ClassLabelEncoder):
        return as_condition(conditioner(torch.tensor([int(p) for p in prompts], device=device)))
    return conditioner(prompts).to(device)


def null_condition(conditioner, batch: int, device):
    if isinstance(conditioner, ClassLabelEncoder):
        return as_condition(conditioner.null(batch).to(device))
    return conditioner.null(batch).to(device)


@torch.no_grad()
def generate_images(cfg: DictConfig, denoiser, first_stage, conditioner, prompts: list[str], steps: int, seed: int,
                    device, batch_size: int | None = None, edit: EditStart | None = None) -> dict:
    """``images`` in [-1, 1] for ``prompts``, image i a function of (seed, i), and ``chain`` (GIF frames of
    image 0's trajectory) when the config asks for it; ``edit`` starts from an image (SDEdit below
    strength 1) and keeps its known part (inpainting)."""
    channels, size = latent_shape(cfg, first_stage)
    schedule = denoiser.schedule

    def draw(indices: list[int], generators) -> dict:
        chunk = [prompts[i] for i in indices]
        x_T, times, wrap = draw_randn((len(chunk), channels, size, size), generators, device), steps, None
        if edit is not None:
            x0 = edit.latent.expand(len(chunk), -1, -1, -1)
            if edit.strength < 1:
                x_T, times = sdedit_start(x0, edit.strength, schedule, steps, generator=generators)
            if edit.known is not None:
                wrap = functools.partial(Inpainting, known=x0, mask=edit.known, schedule=schedule,
                                         generator=generators)
        trajectory = chain_trajectory(cfg, indices)
        z = sample_latent(cfg, denoiser, x_T, generators, times, cond=encode_prompts(conditioner, chunk, device),
                          uncond=null_condition(conditioner, len(chunk), device), wrap=wrap, callback=trajectory)
        chain = None
        if trajectory is not None:
            states = torch.cat(trajectory.frames()).to(device)
            chain = chain_frames(decode(states).cpu())
        return {"images": decode(z).cpu(), "chain": chain}

    def decode(z):
        return (first_stage.decode_latent(z).float() if first_stage is not None else z).clamp(-1, 1)

    return generate(draw, len(prompts), seed, batch_size)


class ImagePipeline:
    sampling_options = ("init", "strength", "mask")  # img2img and inpainting

    def __init__(self, cfg: DictConfig, run_dir: Path | None, device: torch.device):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        if run_dir is None:
            return  # data-only evaluation
        self.first_stage = build_first_stage(cfg)
        if self.first_stage is not None:
            load_frozen_first_stage(self.first_stage, run_dir, device)
        self.conditioner = build_conditioner(cfg).to(device)
        self.denoiser = build_denoiser(cfg, self.first_stage, self.conditioner).to(device).eval()
        modules = {"denoiser": self.denoiser}
        if isinstance(self.conditioner, ClassLabelEncoder):
            modules["label_encoder"] = self.conditioner
        load_stage_weights(run_dir, "diffusion", modules)

    @functools.cached_property
    def judge(self):
        """(images, prompts=, labels=) -> metrics: the config's ``modality.judge`` (runs from before it
        existed: the shapes2d judge)."""
        spec = self.cfg.modality.get("judge")
        return instantiate(spec) if spec else evaluate_samples

    def prompts(self, num_samples: int, prompt: str | None) -> list[str]:
        if prompt:
            return [prompt] * num_samples
        dataset = build_dataset(self.cfg, num_samples=min(2000, self.cfg.data.get("num_samples", 2000)))
        vocabulary = caption_vocabulary(dataset, labelled=isinstance(self.conditioner, ClassLabelEncoder))
        return [vocabulary[i % len(vocabulary)] for i in range(num_samples)]

    def sample(self, num_samples: int, prompt: str | None = None, seed: int = 0) -> dict:
        prompts = self.prompts(num_samples, prompt)
        result = generate_images(self.cfg, self.denoiser, self.first_stage, self.conditioner, prompts, self.cfg.steps,
                                 seed, self.device, self.cfg.get("batch_size"),
                                 edit=edit_start(self.cfg, self.first_stage, self.device))
        return {**result, "prompts": prompts, "seeds": [seed] * len(prompts)}

    def export(self, result: dict, out_dir: Path):
        export_image_samples(out_dir, result["images"], prompts=result["prompts"], seeds=result["seeds"],
                             chain=result.get("chain"))

    def evaluate_samples(self, out_dir: Path) -> dict:
        samples = load_image_samples(out_dir)
        prompts, labels = samples["prompts"], None
        if prompts is not None and len(prompts) and all(str(p).isdigit() for p in prompts):
            prompts, labels = None, [int(p) for p in prompts]  # label-conditioned runs store class indices
        metrics = self.judge(samples["images"], prompts=prompts, labels=labels)
        keep = ("n", "valid_rate", "prompt_accuracy", "label_accuracy", "color_accuracy", "shape_accuracy",
                "class_entropy")
        return {k: v for k, v in metrics.items() if k in keep}

    @torch.no_grad()
    def nll_terms(self, split: str, num_samples: int) -> list[NLLTerm]:
        """The first ``num_samples`` images of ``split``, encoded (posterior mean), with their prompts; pixel runs
        count 8-bit bins."""
        data = build_dataset(self.cfg, split="train" if split == "all" else split,
                             num_samples=min(num_samples, self.cfg.data.get("num_samples", num_samples)))
        images, captions, labels = load_images(data)
        x = to_model(images[:num_samples]).to(self.device)
        labelled = isinstance(self.conditioner, ClassLabelEncoder)
        prompts = [str(int(y)) for y in labels[:num_samples]] if labelled else captions[:num_samples]
        x0 = self.first_stage.encode_latent(x) if self.first_stage is not None else x
        return [NLLTerm("diffusion", self.denoiser, x0.float(), encode_prompts(self.conditioner, prompts, self.device),
                        bin_width=None if self.first_stage is not None else 2 / 255)]

    def evaluate_data(self, split: str, num_samples: int) -> dict:
        data = build_dataset(self.cfg, split="train" if split == "all" else split,
                             num_samples=min(num_samples, self.cfg.data.get("num_samples", num_samples)))
        images, captions, _ = load_images(data)
        images, captions = images[:num_samples], captions[:num_samples]  # an image folder: its first files
        metrics = self.judge(images, prompts=captions)
        return {k: v for k, v in metrics.items()
                if k in ("n", "valid_rate", "prompt_accuracy", "color_accuracy", "shape_accuracy", "class_entropy")}
