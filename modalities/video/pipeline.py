"""`mldm sample` / `mldm evaluate` for video: rebuild the trained model from a run directory, sample text-to-video,
image-to-video (``first_frame=IMG``) or longer videos (``num_frames=K``), export, and judge moving_shapes videos."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from modalities.image.data import read_image
from modalities.video import components as parts
from modalities.video.data import MovingShapes
from modalities.video.export import export_videos, load_video_samples
from modalities.video.fvd import fvd, load_feature_network
from modalities.video.metrics import evaluate_videos, parse_prompt
from modalities.video.sampling import generate_videos
from modalities.video.conditions import VideoCondition
from shared.errors import ConfigError
from shared.generation.likelihood import NLLTerm
from shared.training.checkpoint import load_frozen_first_stage, load_stage_weights


class VideoPipeline:
    sampling_options = ("first_frame", "num_frames", "context_frames")

    def __init__(self, cfg: DictConfig, run_dir: Path | None, device: torch.device):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        if run_dir is None:
            return  # data-only evaluation
        self.decoder = parts.load_decoder(cfg, run_dir, device)
        self.image_first_stage = load_frozen_first_stage(parts.build_first_stage(cfg), run_dir, device)
        self.conditioner = parts.build_conditioner(cfg).to(device)
        image = parts.build_image_denoiser(cfg, self.image_first_stage, self.conditioner)
        self.image_denoiser = None
        if cfg.modality.get("factorised", False):  # the image stage's own weights draw the first frames
            self.image_denoiser = parts.build_image_denoiser(cfg, self.image_first_stage, self.conditioner)
            load_stage_weights(run_dir, "image_diffusion", {"denoiser": self.image_denoiser})
            self.image_denoiser.to(device).eval()
        self.denoiser = parts.build_video_denoiser(cfg, image).to(device).eval()
        load_stage_weights(run_dir, "video_diffusion", {"denoiser": self.denoiser})

    def prompts(self, num_samples: int, prompt: str | None) -> list[str]:
        if prompt:
            return [prompt] * num_samples
        dataset = parts.build_dataset(self.cfg, num_samples=min(2000, self.cfg.data.get("num_samples", 2000)))
        captions = dataset.materialize()["captions"] if isinstance(dataset, MovingShapes) else \
            [dataset[i]["caption"] for i in range(len(dataset))]
        vocabulary = sorted(set(captions))
        return [vocabulary[i % len(vocabulary)] for i in range(num_samples)]

    def first_frame(self) -> torch.Tensor | None:
        path = self.cfg.get("first_frame")
        if not path:
            return None
        image = read_image(path, self.cfg.data.size).to(self.device)
        with torch.no_grad():
            return self.image_first_stage.encode_latent(image[None])[0].float()

    def sample(self, num_samples: int, prompt: str | None = None, seed: int = 0) -> dict:
        window = int(self.cfg.data.num_frames)
        num_frames = int(self.cfg.get("num_frames") or window)
        context = self.cfg.get("context_frames") or self.cfg.modality.temporal.context_frames
        if num_frames > window and self.cfg.modality.temporal.context_frames < 1:
            raise ConfigError(f"num_frames={num_frames}: this model makes {window}-frame videos and was trained "
                              f"without known frames (modality.temporal.context_frames=0), so it cannot extend them")
        prompts = self.prompts(num_samples, prompt)
        result = generate_videos(self.cfg, self.denoiser, self.decoder, self.conditioner, prompts,
                                 steps=self.cfg.steps, seed=seed, device=self.device,
                                 latent_shape=parts.latent_shape(self.cfg, self.image_first_stage),
                                 num_frames=num_frames, window=window, context_frames=int(context),
                                 first_frame=self.first_frame(), batch_size=self.cfg.get("batch_size"),
                                 image_denoiser=self.image_denoiser)
        return {**result, "prompts": prompts, "seeds": [seed] * len(prompts)}

    def export(self, result: dict, out_dir: Path):
        export_videos(out_dir, result["videos"], prompts=result["prompts"], seeds=result["seeds"],
                      chain=result.get("chain"))

    def evaluate_samples(self, out_dir: Path) -> dict:
        samples = load_video_samples(out_dir)
        prompts = samples["prompts"]
        if prompts is not None and not all(_is_moving_shapes_prompt(p) for p in prompts):
            prompts = None  # a video folder's captions: the judge's rates without prompt accuracy
        metrics = evaluate_videos(samples["videos"], prompts=prompts)
        network = (self.cfg.modality.get("fvd") or {}).get("network")
        if network:
            metrics["fvd"] = self.fvd(samples["videos"], network)
        return metrics

    def fvd(self, videos, network: str) -> float:
        """FVD of ``videos`` against as many videos of the data's ``val`` split (a folder: its clips), with the
        user's local feature network (``modality.fvd.network``: an I3D TorchScript file or a VideoMAE folder)."""
        settings = self.cfg.modality.fvd
        features = load_feature_network(network, device=self.device, resize_to=settings.get("resize_to"))
        dataset = parts.build_dataset(self.cfg, split="val", num_samples=len(videos))
        real, _ = parts.load_videos(dataset)
        return fvd(videos, real[:len(videos)].permute(0, 1, 3, 4, 2).numpy(), features)

    def evaluate_data(self, split: str, num_samples: int) -> dict:
        dataset = parts.build_dataset(self.cfg, split="train" if split == "all" else split, num_samples=num_samples)
        videos, captions = parts.load_videos(dataset)
        return evaluate_videos(videos[:num_samples].permute(0, 1, 3, 4, 2).numpy(), prompts=captions[:num_samples])

    @torch.no_grad()
    def nll_terms(self, split: str, num_samples: int) -> list[NLLTerm]:
        """The first ``num_samples`` videos of ``split``, encoded frame by frame (posterior mean), with their
        prompts and no known frame."""
        dataset = parts.build_dataset(self.cfg, split="train" if split == "all" else split, num_samples=num_samples)
        videos, captions = parts.load_videos(dataset)
        x = parts.to_model(videos[:num_samples]).to(self.device)
        z = parts.per_frame(self.image_first_stage.encode_latent, x).float()
        cond = VideoCondition(self.conditioner(captions[:num_samples]).to(self.device))
        return [NLLTerm("video_diffusion", self.denoiser, z, cond)]


def _is_moving_shapes_prompt(prompt: str) -> bool:
    try:
        parse_prompt(prompt)
        return True
    except ValueError:
        return False
