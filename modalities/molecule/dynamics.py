"""EDM's EGNN dynamics as the raw denoising backbone of molecule latent diffusion (Hoogeboom et al.
2022, ``EGNN_dynamics_QM9``; the denoiser of GeoLDM, Xu et al. 2023).

``backbone(x_in [n, 3 + k], time [n], cond: MoleculeCondition) -> [n, 3 + k]``: the EGNN runs on
positions x_in[:, :3] with node inputs [z_h, time, p · present, present]; the output is
[x_out − x_in with each molecule's mean removed (an equivariant vector, e.g. ε_x), h_out (invariant)].
The mean removal keeps the prediction in the zero-CoM subspace ``shared.diffusion.spaces.ZeroCoMSpace`` draws
noise in, so the x-part of an ε- or x̂₀-prediction never leaves it. Under
``parameterization=sample_residual`` (x̂₀ = x_t + output) x̂₀'s positions are where the EGNN moved the
atoms.

With ``self_conditioning`` (Chen et al. 2023; ``shared.diffusion.self_conditioning``) the EGNN also reads an
earlier estimate x̃_0: its invariant features and a presence flag per atom, and per edge its squared
pair distance (and Gaussians of that distance, as the EGNN's own) — invariants only, so the
network stays E(3)-equivariant. Without an estimate these inputs are zeros.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn.models.schnet import GaussianSmearing

from modalities.blocks import timestep_embedding
from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.egnn import EGNN, gaussians_of_distance, squared_distances
from shared.diffusion.spaces import ZeroCoMSpace

MODEL_TIME_SCALE = 1e-3  # shared.diffusion.schedules' model time is 1000·t; EDM feeds t ∈ [0, 1] itself


class TimeFeatures(nn.Module):
    """Invariant per-atom time inputs: EDM's scalar t (``embedding_dim=0``) or a sinusoidal embedding."""

    def __init__(self, embedding_dim: int = 0, scale: float = MODEL_TIME_SCALE):
        super().__init__()
        self.embedding_dim, self.scale = embedding_dim, scale

    @property
    def num_features(self) -> int:
        return self.embedding_dim or 1

    def forward(self, time: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.embedding_dim:
            return timestep_embedding(time, self.embedding_dim).to(like.dtype)  # expects the 1000·t scale
        return (time.to(like.dtype) * self.scale)[:, None]


def check_rows(x_in: torch.Tensor, time: torch.Tensor, cond) -> MoleculeCondition:
    if not isinstance(cond, MoleculeCondition):
        raise TypeError(f"molecule backbones need a MoleculeCondition (graph + properties), got {type(cond).__name__}")
    if time.shape != (x_in.shape[0],) or cond.batch.shape != (x_in.shape[0],):
        raise ValueError(f"need one time and one molecule index per atom row: x_in {tuple(x_in.shape)}, "
                         f"time {tuple(time.shape)}, batch {tuple(cond.batch.shape)}")
    return cond


def remove_position_mean(velocity_and_features: torch.Tensor, cond: MoleculeCondition) -> torch.Tensor:
    return ZeroCoMSpace(batch=cond.batch, num_items=cond.num_molecules).project(velocity_and_features)


class EGNNDynamics(nn.Module):
    def __init__(self, latent_features: int = 1, hidden: int = 256, num_blocks: int = 9,
                 property_features: int = 0, inv_sublayers: int = 1, attention: bool = True, tanh: bool = True,
                 coords_range: float = 15.0, norm_constant: float = 1.0, normalization_factor: float = 1.0,
                 time_embedding_dim: int = 0, distance_expansion: int = 0, expansion_cutoff: float = 5.0,
                 self_conditioning: bool = False):
        super().__init__()
        self.latent_features, self.property_features = latent_features, property_features
        self.time_features = TimeFeatures(time_embedding_dim)
        self.self_conditioning = self_conditioning
        self.estimate_expansion = (GaussianSmearing(0.0, expansion_cutoff, distance_expansion)
                                   if self_conditioning and distance_expansion else None)
        condition_features = property_features + 1 if property_features else 0
        estimate_features = latent_features + 1 if self_conditioning else 0
        self.egnn = EGNN(latent_features + self.time_features.num_features + condition_features + estimate_features,
                         hidden, latent_features, num_blocks, inv_sublayers, attention, tanh, coords_range,
                         norm_constant, normalization_factor, distance_expansion, expansion_cutoff,
                         edge_context_features=1 + distance_expansion if self_conditioning else 0)

    def estimate_inputs(self, estimate: torch.Tensor | None, like: torch.Tensor,
                        edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(node inputs [n, k + 1], edge context [E, 1 + expansion]) of the estimate x̃_0, zeros for none."""
        edge_features = self.egnn.edge_context_features
        if estimate is None:
            return (like.new_zeros(len(like), self.latent_features + 1),
                    like.new_zeros(edge_index.shape[1], edge_features))
        if estimate.shape != like.shape:
            raise ValueError(f"the self-conditioning estimate must match x_in {tuple(like.shape)}, "
                             f"got {tuple(estimate.shape)}")
        estimate = estimate.to(like.dtype)
        squared = squared_distances(estimate[:, :3], edge_index)
        edge = [squared]
        if self.estimate_expansion is not None:
            edge.append(gaussians_of_distance(self.estimate_expansion, squared))
        return torch.cat([estimate[:, 3:], like.new_ones(len(like), 1)], dim=1), torch.cat(edge, dim=1)

    def forward(self, x_in: torch.Tensor, time: torch.Tensor, cond: MoleculeCondition,
                self_condition: torch.Tensor | None = None) -> torch.Tensor:
        cond = check_rows(x_in, time, cond)
        positions, features = x_in[:, :3], x_in[:, 3:]
        parts = [features, self.time_features(time, x_in), cond.atom_features(self.property_features, x_in)]
        edge_context = None
        if self.self_conditioning:
            estimate_nodes, edge_context = self.estimate_inputs(self_condition, x_in, cond.edge_index)
            parts.append(estimate_nodes)
        elif self_condition is not None:
            raise ValueError("this EGNNDynamics is not self-conditioned (backbone.self_conditioning=false)")
        h_out, x_out = self.egnn(torch.cat(parts, dim=1), positions, cond.edge_index, edge_context)
        return remove_position_mean(torch.cat([x_out - positions, h_out], dim=1), cond)
