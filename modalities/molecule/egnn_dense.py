"""The padded, all-pairs formulation of an ``EGNN``: the same modules and parameters on h[B, N, F],
x[B, N, 3], mask[B, N], with every pair (i, j ≠ i) of real atoms of a molecule an edge.

This is EDM's own layout (fully connected [B·N·N] edges with an edge mask, Hoogeboom et al. 2022);
here it serves as a cross-check of the sparse message passing (same outputs on the same graph) and as
the baseline of ``benchmarks/molecule_egnn.py``. Pair tensors are [B, N(target i), N(source j), ·].
Padding rows return exact zeros.
"""
from __future__ import annotations

import torch

from modalities.molecule.egnn import EGNN, edge_geometry, node_terms


def pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, N, N, 1]: both atoms real and i ≠ j (no self-loops, as EDM's edge mask)."""
    mask = mask.bool()
    pairs = mask[:, :, None] & mask[:, None, :]
    pairs &= ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return pairs[..., None]


def _pairwise(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values_i, values_j), each broadcast to [B, N, N, C]."""
    b, n, c = values.shape
    return values[:, :, None].expand(b, n, n, c), values[:, None, :].expand(b, n, n, c)


def _pair_terms(first_layer, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The edge MLP's target term of atom i and source term of atom j, broadcast to [B, N, N, hidden]."""
    target_term, source_term = node_terms(first_layer, h)
    return _pairwise(target_term)[0], _pairwise(source_term)[1]


def dense_egnn(model: EGNN, h: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
               edge_context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``model`` on padded molecules: (h_out [B, N, out_features], x_out [B, N, 3]); ``edge_context``
    [B, N, N, edge_context_features] as the sparse model's, per pair."""
    edges = pair_mask(mask).to(x.dtype)
    nodes = mask[..., None].to(x.dtype)
    x = x * nodes
    input_distances, _ = edge_geometry(*_pairwise(x), norm_constant=0.0)
    h = model.embedding(h) * nodes
    for block in model.blocks:
        distances, direction = edge_geometry(*_pairwise(x), block.norm_constant)
        edge_attr = block.edge_attributes(distances, input_distances, edge_context)
        for sublayer in block.sublayers:
            summed = (sublayer.messages(*_pair_terms(sublayer.edge_mlp[0], h), edge_attr) * edges).sum(2)
            h = sublayer.node_update(h, summed) * nodes  # padding rows must stay finite and inert
        summed = (block.coordinates.shifts(*_pair_terms(block.coordinates.coord_mlp[0], h), edge_attr, direction)
                  * edges).sum(2)
        x = block.coordinates.apply_shifts(x, summed)
    return model.embedding_out(h) * nodes, x * nodes
