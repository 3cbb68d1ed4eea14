"""An E(3)-equivariant tensor-field backbone with higher-order features, built from e3nn (Geiger &
Smidt 2022): the alternative to ``EGNNDynamics`` with the same contract and the same condition.

Node features are direct sums of irreps (default "32x0e + 8x1o + 8x1e + 4x2e"). Each interaction
(NequIP-style, Batzner et al. 2022) sends, along every edge j → i,

    w_ij = MLP(radial basis of ‖r_ij‖),  r_ij = x_i − x_j
    m_ij = TP_w_ij(f_j ⊗ Y(r_ij / ‖r_ij‖)),   Y: spherical harmonics l ≤ 2 (0e + 1o + 2e)

sums messages per target over the normalization factor, applies a gated nonlinearity (Weiler et al.
2018) and adds a linear self-connection. The readout is 1x1o (the position update, mean removed per
molecule) + k x 0e. Parity is tracked throughout (positions are 1o, Y^l has parity (−1)^l), so the
map is equivariant under all of O(3), reflections included, and translation-invariant (only
differences of positions enter).
"""
from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn
from torch.nn import functional as F

from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.dynamics import TimeFeatures, check_rows, remove_position_mean


def path_exists(irreps_in: o3.Irreps, irreps_edge: o3.Irreps, ir_out: o3.Irrep) -> bool:
    """Whether some ir_in ⊗ ir_edge contains ir_out (selection rules incl. parity)."""
    return any(ir_out in ir_in * ir_edge for _, ir_in in irreps_in for _, ir_edge in irreps_edge)


class Interaction(nn.Module):
    """One convolution: radial-weighted tensor product with the edge harmonics, sum, gate, + skip."""

    def __init__(self, irreps_in: o3.Irreps, irreps_target: o3.Irreps, irreps_sh: o3.Irreps,
                 num_basis: int, radial_hidden: int, normalization_factor: float):
        super().__init__()
        self.normalization_factor = normalization_factor
        reachable = [(mul, ir) for mul, ir in irreps_target if path_exists(irreps_in, irreps_sh, ir)]
        scalars = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l > 0])
        # even scalars take SiLU; odd (pseudo)scalars need an odd function to keep their parity
        self.gate = Gate(scalars, [F.silu if ir.p == 1 else torch.tanh for _, ir in scalars],
                         o3.Irreps(f"{gated.num_irreps}x0e"), [torch.sigmoid], gated)
        self.tensor_product = o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, self.gate.irreps_in,
                                                             shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([num_basis, radial_hidden, self.tensor_product.weight_numel], F.silu)
        self.self_connection = o3.Linear(irreps_in, self.gate.irreps_out)
        self.irreps_out = self.gate.irreps_out

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor, edge_sh: torch.Tensor,
                edge_basis: torch.Tensor) -> torch.Tensor:
        source, target = edge_index
        messages = self.tensor_product(features[source], edge_sh, self.radial(edge_basis))
        summed = features.new_zeros(features.shape[0], messages.shape[1]).index_add_(0, target, messages)
        return self.self_connection(features) + self.gate(summed / self.normalization_factor)


class E3nnDynamics(nn.Module):
    """``backbone(x_in [n, 3 + k], time [n], cond: MoleculeCondition) -> [n, 3 + k]``, like ``EGNNDynamics``.

    ``normalization_factor`` divides each sum over neighbours (≈ √(mean neighbours) keeps the
    tensor products' output variance near 1 on QM9-size fully connected graphs, hence 4, not EDM's 1).
    The radial basis is Gaussian without a cutoff: on a fully connected noisy latent no pair is dropped.
    """

    def __init__(self, latent_features: int = 1, hidden_irreps: str = "32x0e + 8x1o + 8x1e + 4x2e",
                 num_blocks: int = 3, property_features: int = 0, max_sh_degree: int = 2,
                 num_radial_basis: int = 8, max_radius: float = 10.0, radial_hidden: int = 32,
                 normalization_factor: float = 4.0, time_embedding_dim: int = 0):
        super().__init__()
        self.latent_features, self.property_features = latent_features, property_features
        self.num_radial_basis, self.max_radius = num_radial_basis, max_radius
        self.time_features = TimeFeatures(time_embedding_dim)
        hidden = o3.Irreps(hidden_irreps).simplify()
        irreps_sh = o3.Irreps.spherical_harmonics(max_sh_degree)  # 0e + 1o + 2e: Y^l has parity (−1)^l
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")

        condition_features = property_features + 1 if property_features else 0
        scalar_inputs = latent_features + self.time_features.num_features + condition_features
        hidden_scalars = o3.Irreps([(mul, ir) for mul, ir in hidden if ir == o3.Irrep("0e")])
        self.embedding = o3.Linear(o3.Irreps(f"{scalar_inputs}x0e"), hidden_scalars)
        irreps, layers = hidden_scalars, []
        for _ in range(num_blocks):
            layers.append(Interaction(irreps, hidden, irreps_sh, num_radial_basis, radial_hidden, normalization_factor))
            irreps = layers[-1].irreps_out
        self.interactions = nn.ModuleList(layers)
        self.readout = o3.Linear(irreps, o3.Irreps(f"1x1o + {latent_features}x0e"))  # [velocity (x, y, z), z_h]

    def forward(self, x_in: torch.Tensor, time: torch.Tensor, cond: MoleculeCondition) -> torch.Tensor:
        cond = check_rows(x_in, time, cond)
        positions, features = x_in[:, :3], x_in[:, 3:]
        source, target = cond.edge_index
        relative = positions[target] - positions[source]
        edge_sh = self.spherical_harmonics(relative)
        edge_basis = soft_one_hot_linspace(relative.norm(dim=1), 0.0, self.max_radius, self.num_radial_basis,
                                           basis="gaussian", cutoff=False) * self.num_radial_basis**0.5
        h = self.embedding(torch.cat([features, self.time_features(time, x_in),
                                      cond.atom_features(self.property_features, x_in)], dim=1))
        for interaction in self.interactions:
            h = interaction(h, cond.edge_index, edge_sh, edge_basis)
        return remove_position_mean(self.readout(h), cond)  # e3nn's 1o basis is Cartesian (D(R) = R)
