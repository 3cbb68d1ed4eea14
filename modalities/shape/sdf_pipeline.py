"""`mldm sample` / `mldm evaluate` for SDF latents: z from the class-conditional latent prior (CFG),
meshes by marching cubes of f(x, z), points sampled from the meshes; mesh quality (watertight
fraction, Chamfer to the nearest training shape) plus the point-cloud metrics on those points."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from modalities.shape.components import (build_label_encoder, build_sdf_autoencoder, build_sdf_denoiser,
                                         class_indices, dataset_label_names, label_conditions, load_shapes,
                                         parse_labels)
from modalities.shape.evaluation import compare_with_data, data_row, reference_set
from modalities.shape.export import export_meshes, load_shape_samples, slice_frames
from modalities.shape.mesh import extract_mesh, sample_mesh_points
from modalities.shape.metrics import chamfer_to_nearest, watertight_fraction
from shared.diffusion.draws import draw_randn
from shared.generation.chain import Trajectory, chain_trajectory
from shared.generation.generate import generate, sample_latent
from shared.generation.likelihood import NLLTerm
from shared.training.checkpoint import load_stage_weights


@torch.no_grad()
def latents_to_meshes(cfg: DictConfig, autoencoder, z: torch.Tensor, normalized: bool = True, seed: int = 0):
    """Marching-cubes meshes of f(·, z) for each latent, and ``data.num_points`` points sampled on each."""
    settings, device = cfg.modality.mesh, z.device
    decode = autoencoder.decode_latent if normalized else autoencoder.decode
    meshes, points = [], []
    for i in range(len(z)):
        mesh = extract_mesh(lambda q: decode(z[i:i + 1], q[None].to(device))[0], settings.resolution, settings.bound,
                            settings.level, device=device, min_component_fraction=settings.min_component_fraction)
        meshes.append(mesh)
        points.append(torch.from_numpy(sample_mesh_points(mesh, cfg.data.num_points, seed=seed + i)))
    return meshes, torch.stack(points)


def export_latents(cfg, autoencoder, z, labels, out_dir: Path, label_names, normalized: bool = True, seeds=None,
                   seed: int = 0, chain=None):
    meshes, points = latents_to_meshes(cfg, autoencoder, z, normalized, seed)
    labels = [int(label) for label in labels] if label_names else None  # unlabelled folders carry no class
    export_meshes(out_dir, meshes, points, labels=labels, label_names=label_names or None,
                  seeds=seeds, mesh_format=cfg.modality.mesh.format, chain=chain)


class SDFPipeline:
    def __init__(self, cfg: DictConfig, run_dir: Path | None, device: torch.device, denoiser=None,
                 label_encoder=None):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        if run_dir is None:
            return
        self.label_names = dataset_label_names(cfg)
        self.autoencoder = build_sdf_autoencoder(cfg, run_dir, device)
        if denoiser is None:  # during training the preview passes the EMA denoiser and its label encoder in
            label_encoder = build_label_encoder(cfg, len(self.label_names)).to(device)
            denoiser = build_sdf_denoiser(cfg, self.autoencoder, label_encoder).to(device).eval()
            load_stage_weights(run_dir, "diffusion", {"denoiser": denoiser, "label_encoder": label_encoder})
        self.denoiser, self.label_encoder = denoiser, label_encoder

    @torch.no_grad()
    def sample(self, num_samples: int, prompt: str | None = None, seed: int = 0, steps: int | None = None) -> dict:
        labels = parse_labels(prompt, num_samples, self.label_names)

        def draw(indices: list[int], generators) -> dict:
            cond, uncond = label_conditions(self.label_encoder, labels[indices], self.device)
            x_T = draw_randn((len(indices), self.autoencoder.latent_channels), generators, self.device)
            trajectory = chain_trajectory(self.cfg, indices)
            z = sample_latent(self.cfg, self.denoiser, x_T, generators, steps or self.cfg.steps, cond=cond,
                              uncond=uncond, callback=trajectory)
            return {"z": z, "chain": self.chain(trajectory) if trajectory is not None else None}

        return {**generate(draw, num_samples, seed, self.cfg.get("batch_size")), "labels": labels.tolist(),
                "seed": seed}

    @torch.no_grad()
    def chain(self, trajectory: Trajectory, resolution: int = 64) -> list:
        """GIF frames of shape 0 along its denoising steps: f(x, y, 0; z_t), the field's slice through the centre."""
        bound = self.cfg.modality.mesh.bound
        axis = torch.linspace(-bound, bound, resolution)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)  # (y, x) per row-major cell
        queries = torch.cat([grid[:, 1:], grid[:, :1], torch.zeros(len(grid), 1)], 1).to(self.device)
        states = torch.cat(trajectory.frames()).to(self.device)
        values = self.autoencoder.decode_latent(states, queries.expand(len(states), -1, -1))
        return slice_frames(values.float().cpu().reshape(len(states), resolution, resolution).numpy(), bound)

    def export(self, result: dict, out_dir: Path):
        export_latents(self.cfg, self.autoencoder, result["z"], result["labels"], out_dir, self.label_names,
                       seeds=[result["seed"]] * len(result["labels"]), seed=result["seed"], chain=result.get("chain"))

    def evaluate_samples(self, out_dir: Path) -> dict:
        samples = load_shape_samples(out_dir)
        metrics = compare_with_data(self.cfg, samples["points"], samples["labels"])
        training, _ = load_shapes(self.cfg, with_sdf=False)
        subset = torch.randperm(samples["points"].shape[1], generator=torch.Generator().manual_seed(0))
        subset = subset[:self.cfg.modality.evaluation.nearest_points]  # all-pairs CD with the training set is costly
        nearest = chamfer_to_nearest(samples["points"][:, subset], training["points"][:, subset])
        return {**metrics, "watertight": watertight_fraction(samples["meshes"]),
                "chamfer_to_train": float(nearest.mean())}

    @torch.no_grad()
    def nll_terms(self, split: str, num_samples: int) -> list[NLLTerm]:
        """Held-out shapes' surface points encoded (posterior mean), with their classes."""
        points, labels = reference_set(self.cfg, num_samples, "test" if split == "all" else split)
        z = self.autoencoder.latent_stats.normalize(self.autoencoder.encode(points.to(self.device)).mean).float()
        cond, _ = label_conditions(self.label_encoder, class_indices(labels, self.label_names), self.device)
        return [NLLTerm("diffusion", self.denoiser, z, cond)]

    def evaluate_data(self, split: str, num_samples: int) -> dict:
        return data_row(self.cfg, split, num_samples)
