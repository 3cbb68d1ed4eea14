"""Molecules as sparse graphs: a packed-array dataset yielding torch-geometric ``Data``, the collate
to ``Batch``, and edge / padding helpers written in plain torch (no pyg-lib, so no ``knn_graph`` or
``radius_graph``).

Node layout is torch-geometric's: nodes of a batch are rows, ``batch[num_nodes]`` names each node's
molecule, and the nodes of one molecule are contiguous (``batch`` is sorted). Edge indices follow
its ``source_to_target`` convention: ``edge_index[0]`` is the source, ``edge_index[1]`` the target.
For mean removal use the core's ``shared.diffusion.spaces.ZeroCoMSpace(batch=batch.batch).project(pos)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch


@dataclass
class MoleculeBatch:
    """Sparse rows of several molecules: ``batch[n]`` names each atom's molecule (sorted)."""
    pos: torch.Tensor            # [n, 3] Å, as stored
    atom_type: torch.Tensor      # [n] long
    batch: torch.Tensor          # [n] long
    properties: torch.Tensor     # [M, P]
    rows: torch.Tensor           # [n] the atoms' rows in the packed arrays

    @property
    def num_molecules(self) -> int:
        return self.properties.shape[0]

    def to(self, device) -> MoleculeBatch:
        return MoleculeBatch(*(t.to(device) for t in (self.pos, self.atom_type, self.batch, self.properties)),
                             self.rows)


class PackedMolecules(torch.utils.data.Dataset):
    """Molecules stored back to back: atoms of molecule ``m`` are rows ``offsets[m]:offsets[m+1]``.

    Item ``m`` is ``Data(pos float32 [n, 3], atom_type long [n], y float32 [1, P], num_nodes=n)``;
    positions are returned as stored (Å, not centred). ``property_names`` names the ``P`` columns
    of ``y`` (``P`` may be 0, e.g. for user files without properties).
    """

    def __init__(self, positions: np.ndarray, atom_types: np.ndarray, num_atoms: np.ndarray,
                 properties: np.ndarray | None = None, property_names: Sequence[str] = ()):
        num_atoms = np.asarray(num_atoms, dtype=np.int64)
        if positions.shape != (int(num_atoms.sum()), 3) or atom_types.shape != (len(positions),):
            raise ValueError(f"inconsistent packing: positions {positions.shape}, atom types "
                             f"{atom_types.shape}, {int(num_atoms.sum())} atoms in the counts")
        if properties is None:
            properties = np.zeros((len(num_atoms), len(property_names)), np.float32)
        if properties.shape != (len(num_atoms), len(property_names)):
            raise ValueError(f"properties have shape {properties.shape}, expected "
                             f"{(len(num_atoms), len(property_names))}")
        self.positions = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float32))
        self.atom_types = torch.from_numpy(np.ascontiguousarray(atom_types, dtype=np.int64))
        self.num_atoms = torch.from_numpy(num_atoms)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.num_atoms.cumsum(0)])
        self.properties = torch.from_numpy(np.ascontiguousarray(properties, dtype=np.float32))
        self.property_names = tuple(property_names)

    def __len__(self) -> int:
        return len(self.num_atoms)

    def gather(self, indices: torch.Tensor) -> MoleculeBatch:
        """Molecules ``indices`` as one sparse batch (vectorised; the training loop's path, where
        ``collate_molecules`` of ``Data`` items is the DataLoader's)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        counts = self.num_atoms[indices]
        batch = torch.repeat_interleave(torch.arange(len(indices)), counts)
        first_row = counts.cumsum(0) - counts
        rows = self.offsets[indices][batch] + torch.arange(int(counts.sum())) - first_row[batch]
        return MoleculeBatch(self.positions[rows], self.atom_types[rows], batch, self.properties[indices], rows)

    def __getitem__(self, index: int) -> Data:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        index %= len(self)
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return Data(pos=self.positions[start:stop], atom_type=self.atom_types[start:stop],
                    y=self.properties[index:index + 1], num_nodes=stop - start)


def collate_molecules(items: Sequence[Data]) -> Batch:
    """``DataLoader(collate_fn=collate_molecules)``: one sparse ``Batch`` (rows concatenated, with
    ``batch`` and ``ptr``; ``y`` becomes [B, P]); nothing is padded."""
    return Batch.from_data_list(list(items))


def _graph_sizes(batch: torch.Tensor, num_graphs: int | None) -> torch.Tensor:
    if batch.ndim != 1:
        raise ValueError(f"batch must be 1-D [num_nodes], got shape {tuple(batch.shape)}")
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (the nodes of each molecule contiguous), as in a pyg Batch")
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    return torch.bincount(batch, minlength=num_graphs)


def fully_connected_edges(batch: torch.Tensor, num_graphs: int | None = None) -> torch.Tensor:
    """All ordered pairs (i, j), i != j, within each molecule: long [2, Σ n(n-1)], sorted by source
    then target. Vectorised: node i of an n-atom molecule gets n-1 slots k, whose target is local
    index k, shifted by one past i itself to skip the self loop."""
    sizes = _graph_sizes(batch, num_graphs)
    device = batch.device
    starts = sizes.cumsum(0) - sizes                      # first node of each molecule
    node_start = starts[batch]
    local = torch.arange(batch.numel(), device=device) - node_start
    degree = sizes[batch] - 1
    source = torch.repeat_interleave(torch.arange(batch.numel(), device=device), degree)
    slot_start = degree.cumsum(0) - degree
    slot = torch.arange(source.numel(), device=device) - slot_start[source]
    target = node_start[source] + slot + (slot >= local[source]).long()
    return torch.stack([source, target])


def radius_edges(pos: torch.Tensor, batch: torch.Tensor, r: float, num_graphs: int | None = None,
                 max_pairs: int = 1 << 24) -> torch.Tensor:
    """Ordered pairs (i, j), i != j, in the same molecule with ``|pos_i - pos_j| < r``: long [2, E],
    sorted by source then target.

    Candidates are the within-molecule pairs only (what a masked block-diagonal ``cdist`` would
    keep, without computing the cross-molecule blocks), processed in chunks of whole molecules of
    about ``max_pairs`` candidate pairs each (a chunk closes after the molecule that crosses the
    budget), so memory stays bounded for large batches.
    """
    sizes = _graph_sizes(batch, num_graphs)
    pairs = sizes * (sizes - 1)
    chunk_of = torch.div(pairs.cumsum(0) - pairs, max_pairs, rounding_mode="floor")  # by pairs before
    starts = sizes.cumsum(0) - sizes
    kept = []
    for chunk in torch.unique(chunk_of).tolist():
        graphs = (chunk_of == chunk).nonzero().flatten()
        first, last = int(graphs[0]), int(graphs[-1])
        lo, hi = int(starts[first]), int(starts[last] + sizes[last])
        edges = fully_connected_edges(batch[lo:hi] - first, last - first + 1)
        with torch.no_grad():
            distance = (pos[lo:hi][edges[0]] - pos[lo:hi][edges[1]]).norm(dim=-1)
        kept.append(edges[:, distance < r] + lo)
    if not kept:
        return torch.zeros(2, 0, dtype=torch.long, device=batch.device)
    return torch.cat(kept, dim=1)


def to_dense(pos: torch.Tensor, atom_type: torch.Tensor, batch: torch.Tensor,
             max_num_nodes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded copies for dense models / tests: x [B, N, 3], types [B, N], mask bool [B, N].
    Padding is 0 in both x and types (type 0 is H too: always read types through ``mask``)."""
    x, mask = to_dense_batch(pos, batch, max_num_nodes=max_num_nodes)
    types, _ = to_dense_batch(atom_type, batch, max_num_nodes=max_num_nodes)
    return x, types, mask
