"""`mldm sample` / `mldm evaluate` for point clouds: z₀ from the global prior (class-conditional, CFG),
latent points from the point prior given z₀, decoded by the VAE; shape completion from a partial cloud
(``partial=FILE``); PointFlow/LION metrics against a fresh draw of the data."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from modalities.shape.completion import complete
from modalities.shape.components import (build_global_denoiser, build_label_encoder, build_point_denoiser, build_vae,
                                         class_indices, dataset_label_names, label_conditions, parse_labels,
                                         point_condition)
from modalities.shape.export import cloud_frames, export_point_clouds, load_shape_samples, read_point_cloud
from modalities.shape.evaluation import compare_with_data, data_row, reference_set
from shared.diffusion.draws import draw_randn
from shared.generation.chain import Trajectory, chain_trajectory
from shared.generation.generate import generate, sample_latent
from shared.generation.likelihood import NLLTerm
from shared.training.checkpoint import load_stage_weights


class PointCloudPipeline:
    sampling_options = ("partial",)  # a partial cloud to complete

    def __init__(self, cfg: DictConfig, run_dir: Path | None, device: torch.device, point_prior=None):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        if run_dir is None:
            return  # judging data or a sample directory
        self.label_names = dataset_label_names(cfg)
        self.vae = build_vae(cfg, run_dir, device)
        self.label_encoder = build_label_encoder(cfg, len(self.label_names)).to(device)
        self.global_denoiser = build_global_denoiser(cfg, self.vae, self.label_encoder).to(device).eval()
        load_stage_weights(run_dir, "global_prior", {"denoiser": self.global_denoiser,
                                                     "label_encoder": self.label_encoder})
        if point_prior is None:  # during training the preview passes the EMA denoiser and label encoder in
            point_labels = build_label_encoder(cfg, len(self.label_names)).to(device)
            point_denoiser = build_point_denoiser(cfg, self.vae, point_labels).to(device).eval()
            load_stage_weights(run_dir, "point_prior", {"denoiser": point_denoiser, "label_encoder": point_labels})
            point_prior = (point_denoiser, point_labels)
        self.point_denoiser, self.point_labels = point_prior

    def sample_global(self, labels: torch.Tensor, steps, generators, x_T=None) -> torch.Tensor:
        """Normalised z₀ [B, G] for class ``labels`` (classifier-free guidance from the config); ``x_T`` and an
        explicit time grid ``steps`` start it part-way (SDEdit)."""
        cond, uncond = label_conditions(self.label_encoder, labels, self.device)
        if x_T is None:
            x_T = draw_randn((len(labels), self.vae.global_dim), generators, self.device)
        return sample_latent(self.cfg, self.global_denoiser, x_T, generators, steps, cond=cond, uncond=uncond)

    def sample_points(self, z0: torch.Tensor, labels: torch.Tensor, steps: int, generators, wrap=None, callback=None):
        """Normalised latent points [B, M, 3 + D] given normalised z₀ and the class (CFG as configured);
        ``wrap`` adds a further denoiser wrapper (inpainting), ``callback`` sees every step."""
        null = torch.full_like(labels, self.point_labels.null_index)
        cond, uncond = (point_condition(z0, self.point_labels, y) for y in (labels, null))
        x_T = draw_randn((len(z0), self.vae.num_latent_points, self.vae.point_dim), generators, self.device)
        return sample_latent(self.cfg, self.point_denoiser, x_T, generators, steps, cond=cond, uncond=uncond,
                             wrap=wrap, callback=callback)

    @torch.no_grad()
    def sample(self, num_samples: int, prompt: str | None = None, seed: int = 0, steps: int | None = None,
               batch_size: int | None = None) -> dict:
        steps = steps or self.cfg.steps
        labels = parse_labels(prompt, num_samples, self.label_names)
        if self.cfg.get("partial"):
            return complete(self, read_point_cloud(self.cfg.partial), labels, steps, seed, self.cfg.partial)

        def draw(indices: list[int], generators) -> dict:
            chunk = labels[indices]
            z0 = self.sample_global(chunk, steps, generators)
            trajectory = chain_trajectory(self.cfg, indices)
            h = self.sample_points(z0, chunk, steps, generators, callback=trajectory)
            return {"points": self.vae.decode_latent(z0, h, generator=generators).float().cpu(),
                    "chain": self.chain(z0[:1], trajectory) if trajectory is not None else None}

        result = generate(draw, num_samples, seed, batch_size or self.cfg.get("batch_size"))
        return {**result, "labels": labels.tolist(), "seeds": [seed] * num_samples}

    def chain(self, z0: torch.Tensor, trajectory: Trajectory) -> list:
        """GIF frames of cloud 0 along the point prior's steps: each state of its latent points decoded with
        its final z₀ and the same patch seeds, so only the denoising moves."""
        states = torch.cat(trajectory.frames()).to(self.device)
        seeds = draw_randn((1, self.vae.num_latent_points, self.vae.children_per_point, self.vae.seed_dim),
                           torch.Generator().manual_seed(0)).expand(len(states), -1, -1, -1)
        clouds = self.vae.decode_latent(z0.expand(len(states), -1), states, seeds=seeds)
        return cloud_frames(clouds.float().cpu().numpy())

    def export(self, result: dict, out_dir: Path):
        labelled = bool(self.label_names)  # an unlabelled folder's samples carry no class
        export_point_clouds(out_dir, result["points"], labels=result["labels"] if labelled else None,
                            label_names=self.label_names or None,
                            seeds=result["seeds"], extra=result.get("extra"), chain=result.get("chain"))

    def evaluate_samples(self, out_dir: Path) -> dict:
        samples = load_shape_samples(out_dir)
        return compare_with_data(self.cfg, samples["points"], samples["labels"])

    @torch.no_grad()
    def nll_terms(self, split: str, num_samples: int) -> list[NLLTerm]:
        """Held-out clouds encoded (posterior means): log p(z₀ | class) + log p(h | z₀, class), one term each."""
        points, labels = reference_set(self.cfg, num_samples, "test" if split == "all" else split)
        labels = class_indices(labels, self.label_names).to(self.device)
        global_posterior, point_posterior = self.vae.encode(points.to(self.device))
        z0 = self.vae.global_stats.normalize(global_posterior.mean).float()
        h = self.vae.point_stats.normalize(point_posterior.mean).float()
        cond, _ = label_conditions(self.label_encoder, labels, self.device)
        return [NLLTerm("global_prior", self.global_denoiser, z0, cond),
                NLLTerm("point_prior", self.point_denoiser, h, point_condition(z0, self.point_labels, labels))]

    def evaluate_data(self, split: str, num_samples: int) -> dict:
        return data_row(self.cfg, split, num_samples)
