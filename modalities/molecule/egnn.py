"""E(n)-equivariant graph neural network (Satorras et al. 2021), in the variant EDM/GeoLDM use
(Hoogeboom et al. 2022, ``egnn_new.py``; Xu et al. 2023), as torch-geometric message passing.

One equivariant block at positions x with invariant features h, for every edge j → i:

    d²_ij = ‖x_i − x_j‖²,  a_ij = d²_ij at the network's input             (edge features)
    m_ij  = φ_e([h_i, h_j, d²_ij, a_ij]) · sigmoid(φ_att(m_ij))            (gated message)
    h_i  ← h_i + φ_h([h_i, Σ_j m_ij / Z])                                   (× inv_sublayers)
    x_i  ← x_i + Σ_j (x_i − x_j)/(‖x_i − x_j‖ + C) · tanh(φ_x([h_i, h_j, d²_ij, a_ij])) · r / Z

with Z the ``normalization_factor`` (EDM: 1 on QM9), C the ``norm_constant`` (1) and r the
per-block coordinate range ``coords_range / num_blocks`` (15 / blocks). As in EDM, φ_x reads the
updated node features and the edge features rather than the sublayers' messages. With
``distance_expansion`` > 0 the edge features also hold that many Gaussians of ‖x_i − x_j‖ (SchNet's
expansion, Schütt et al. 2017), which resolve bond-length differences a linear read of d² blurs.
``edge_context`` [E, edge_context_features] appends invariant per-edge inputs the caller computes
(e.g. distances in a self-conditioning estimate) to every block's edge features.
Everything rotates with x and nothing else sees coordinates, so h is E(3)-invariant and x
E(3)-equivariant (reflections included) whatever graph the caller passes (in practice: fully connected
within each molecule).

Messages flow from ``edge_index[0]`` (source j) to ``edge_index[1]`` (target i), the PyG convention.
The per-edge maps (``messages``, ``shifts``) and per-node maps (``node_update``) take any leading
dims, so ``egnn_dense`` runs the very same modules on padded [B, N, N, ·] pair tensors. The first
layer of each edge MLP is split into its h_i, h_j and edge parts (``node_terms``), so the h parts are
computed per node, not per edge: the same function, about a third of the per-edge work.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.models.schnet import GaussianSmearing

DISTANCE_EPS = 1e-8  # inside the square root: keeps the gradient of ‖x_i − x_j‖ finite at 0 (as EDM)


def edge_geometry(x_target: torch.Tensor, x_source: torch.Tensor,
                  norm_constant: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(d² [..., 1], (x_i − x_j)/(‖x_i − x_j‖ + C) [..., 3]) for any leading dims."""
    difference = x_target - x_source
    squared = difference.square().sum(-1, keepdim=True)
    return squared, difference / (torch.sqrt(squared + DISTANCE_EPS) + norm_constant)


def node_terms(first_layer: nn.Linear, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W·[h_i, h_j, e] = W_i·h_i + W_j·h_j + W_e·e: the target and source parts of an edge MLP's first
    layer, computed once per node instead of once per edge (E ≈ n² on fully connected molecules)."""
    width = h.shape[-1]
    return h @ first_layer.weight[:, :width].T, h @ first_layer.weight[:, width:2 * width].T


def edge_layer(first_layer: nn.Linear, target_term: torch.Tensor, source_term: torch.Tensor,
               edge_attr: torch.Tensor) -> torch.Tensor:
    """The first layer's output per edge from the gathered node terms (same values as on the concatenation)."""
    edge_weight = first_layer.weight[:, first_layer.in_features - edge_attr.shape[-1]:]
    return target_term + source_term + edge_attr @ edge_weight.T + first_layer.bias


def gaussians_of_distance(expansion: GaussianSmearing, squared: torch.Tensor) -> torch.Tensor:
    """Gaussians of d = √(d² + ε) [..., count] from d² [..., 1], for any leading dims."""
    d = torch.sqrt(squared + DISTANCE_EPS)
    return expansion(d).view(*d.shape[:-1], -1).to(d.dtype)


def squared_distances(x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """d²_ij [E, 1] of each edge j → i."""
    return (x[edge_index[1]] - x[edge_index[0]]).square().sum(-1, keepdim=True)


class GraphConvolution(MessagePassing):
    """EDM's GCL: an attention-gated invariant message-passing sublayer with a residual node update."""

    def __init__(self, hidden: int, edge_features: int = 2, attention: bool = True,
                 normalization_factor: float = 1.0):
        super().__init__(aggr="add")
        self.normalization_factor = normalization_factor
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_features, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden), nn.SiLU())
        self.attention = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid()) if attention else None
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def messages(self, target_term: torch.Tensor, source_term: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """Gated messages from the gathered ``node_terms(edge_mlp[0], h)``."""
        m = self.edge_mlp[1:](edge_layer(self.edge_mlp[0], target_term, source_term, edge_attr))
        return m * self.attention(m) if self.attention is not None else m

    def node_update(self, h: torch.Tensor, summed_messages: torch.Tensor) -> torch.Tensor:
        return h + self.node_mlp(torch.cat([h, summed_messages / self.normalization_factor], dim=-1))

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        target_term, source_term = node_terms(self.edge_mlp[0], h)
        summed = self.propagate(edge_index, t=target_term, s=source_term, edge_attr=edge_attr, size=(len(h), len(h)))
        return self.node_update(h, summed)

    def message(self, t_i: torch.Tensor, s_j: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        return self.messages(t_i, s_j, edge_attr)


class CoordinateUpdate(MessagePassing):
    """EDM's EquivariantUpdate: x_i ← x_i + Σ_j direction_ij · tanh(φ_x(·)) · range / Z."""

    def __init__(self, hidden: int, edge_features: int = 2, tanh: bool = True, coords_range: float = 15.0,
                 normalization_factor: float = 1.0):
        super().__init__(aggr="add")
        self.tanh, self.coords_range, self.normalization_factor = tanh, coords_range, normalization_factor
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)  # EDM: start near the identity map on x
        self.coord_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_features, hidden), nn.SiLU(),
                                       nn.Linear(hidden, hidden), nn.SiLU(), last)

    def shifts(self, target_term: torch.Tensor, source_term: torch.Tensor, edge_attr: torch.Tensor,
               direction: torch.Tensor) -> torch.Tensor:
        """Per-edge shifts from the gathered ``node_terms(coord_mlp[0], h)``."""
        weight = self.coord_mlp[1:](edge_layer(self.coord_mlp[0], target_term, source_term, edge_attr))
        if self.tanh:  # bounds each edge's pull: |shift_ij| < coords_range
            weight = torch.tanh(weight) * self.coords_range
        return direction * weight

    def apply_shifts(self, x: torch.Tensor, summed_shifts: torch.Tensor) -> torch.Tensor:
        return x + summed_shifts / self.normalization_factor

    def forward(self, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                direction: torch.Tensor) -> torch.Tensor:
        target_term, source_term = node_terms(self.coord_mlp[0], h)
        summed = self.propagate(edge_index, t=target_term, s=source_term, edge_attr=edge_attr, direction=direction,
                                size=(len(x), len(x)))
        return self.apply_shifts(x, summed)

    def message(self, t_i: torch.Tensor, s_j: torch.Tensor, edge_attr: torch.Tensor,
                direction: torch.Tensor) -> torch.Tensor:
        return self.shifts(t_i, s_j, edge_attr, direction)


class EquivariantBlock(nn.Module):
    """``inv_sublayers`` GCL sublayers on h, then one coordinate update, all reading the edge
    features [d² at the block's input, d² at the network's input] (EDM's EquivariantBlock)."""

    def __init__(self, hidden: int, inv_sublayers: int = 1, attention: bool = True, tanh: bool = True,
                 coords_range: float = 15.0, norm_constant: float = 1.0, normalization_factor: float = 1.0,
                 distance_expansion: int = 0, expansion_cutoff: float = 5.0, edge_context_features: int = 0):
        super().__init__()
        self.norm_constant = norm_constant
        self.expansion = GaussianSmearing(0.0, expansion_cutoff, distance_expansion) if distance_expansion else None
        edge_features = 2 + distance_expansion + edge_context_features
        self.sublayers = nn.ModuleList(
            GraphConvolution(hidden, edge_features, attention, normalization_factor) for _ in range(inv_sublayers))
        self.coordinates = CoordinateUpdate(hidden, edge_features, tanh, coords_range, normalization_factor)

    def edge_attributes(self, distances: torch.Tensor, input_distances: torch.Tensor,
                        edge_context: torch.Tensor | None = None) -> torch.Tensor:
        """[d², d² at the network's input (, Gaussians of d)(, edge context)] for any leading dims."""
        parts = [distances, input_distances]
        if self.expansion is not None:
            parts.append(gaussians_of_distance(self.expansion, distances))
        if edge_context is not None:
            parts.append(edge_context.to(distances.dtype))
        return torch.cat(parts, dim=-1)

    def forward(self, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor, input_distances: torch.Tensor,
                edge_context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = edge_index
        distances, direction = edge_geometry(x[target], x[source], self.norm_constant)
        edge_attr = self.edge_attributes(distances, input_distances, edge_context)
        for sublayer in self.sublayers:
            h = sublayer(h, edge_index, edge_attr)
        return h, self.coordinates(h, x, edge_index, edge_attr, direction)


class EGNN(nn.Module):
    """h [n, in_features], x [n, 3], edge_index [2, E] -> (h_out [n, out_features], x_out [n, 3]).

    Defaults follow EDM/GeoLDM on QM9 (attention, tanh, norm_constant 1, normalization_factor 1,
    one invariant sublayer per block); their runs use hidden 256 and 9 blocks.
    ``coords_range`` is the total range, split evenly over the blocks (EDM computes the same
    ``coords_range / n_layers`` but hands its blocks the full range; we use the split as stated).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, num_blocks: int = 4,
                 inv_sublayers: int = 1, attention: bool = True, tanh: bool = True, coords_range: float = 15.0,
                 norm_constant: float = 1.0, normalization_factor: float = 1.0, distance_expansion: int = 0,
                 expansion_cutoff: float = 5.0, edge_context_features: int = 0):
        super().__init__()
        self.edge_context_features = edge_context_features
        self.embedding = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(
            EquivariantBlock(hidden, inv_sublayers, attention, tanh, coords_range / max(num_blocks, 1),
                             norm_constant, normalization_factor, distance_expansion, expansion_cutoff,
                             edge_context_features)
            for _ in range(num_blocks))
        self.embedding_out = nn.Linear(hidden, out_features)

    def forward(self, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
                edge_context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if (edge_context is None) != (self.edge_context_features == 0) or (
                edge_context is not None and edge_context.shape != (edge_index.shape[1], self.edge_context_features)):
            raise ValueError(f"this EGNN takes edge_context [E, {self.edge_context_features}], got "
                             f"{None if edge_context is None else tuple(edge_context.shape)} for {edge_index.shape[1]} edges")
        input_distances = squared_distances(x, edge_index)
        h = self.embedding(h)
        for block in self.blocks:
            h, x = block(h, x, edge_index, input_distances, edge_context)
        return self.embedding_out(h), x
