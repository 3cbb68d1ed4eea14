"""The ``cond`` a molecule backbone receives through ``denoiser(x_t, t, cond)``.

Sparse molecule batches need their graph at every call, so the condition carries it: ``batch`` maps
atoms to molecules and ``edge_index`` holds the (fully connected) edges. Optional per-molecule
properties [M, P] (EDM's conditional QM9 models: α, gap, homo, lumo, μ, Cv) come with ``present``;
a backbone sees [p · present, present] per atom, so classifier-free guidance's unconditional input
(Ho & Salimans 2022) is the same condition with ``present`` all False (``unconditional()``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class MoleculeCondition:
    batch: torch.Tensor                      # [n] long: molecule of each atom
    edge_index: torch.Tensor                 # [2, E] long: messages flow edge_index[0] -> edge_index[1]
    properties: torch.Tensor | None = None   # [M, P] (already normalised by the caller)
    present: torch.Tensor | None = None      # [M] bool; None with properties: all present

    @property
    def num_molecules(self) -> int:
        for per_molecule in (self.properties, self.present):
            if per_molecule is not None:
                return per_molecule.shape[0]
        return int(self.batch.max().item()) + 1 if self.batch.numel() else 0

    def unconditional(self) -> MoleculeCondition:
        """The same graph with every property marked absent (the CFG ``uncond``)."""
        return replace(self, present=torch.zeros(self.num_molecules, dtype=torch.bool, device=self.batch.device))

    def with_presence(self, keep: torch.Tensor) -> MoleculeCondition:
        """Only the molecules where ``keep`` [M] is True keep their properties (CFG training dropout)."""
        return replace(self, present=self.presence() & keep.to(self.batch.device).bool())

    def where(self, drop: torch.Tensor, null=None) -> MoleculeCondition:
        """The molecules where ``drop`` [M] is True lose their properties (CFG training dropout through
        ``shared.conditioning.conditioners.drop_condition``; the null condition is always "absent")."""
        return self.with_presence(~drop.to(self.batch.device).bool())

    def presence(self) -> torch.Tensor:
        """[M] bool: which molecules have their properties."""
        if self.properties is None:
            return torch.zeros(self.num_molecules, dtype=torch.bool, device=self.batch.device)
        if self.present is None:
            return torch.ones(self.num_molecules, dtype=torch.bool, device=self.batch.device)
        return self.present.to(self.batch.device).bool()

    def atom_features(self, num_properties: int, like: torch.Tensor) -> torch.Tensor:
        """[n, P + 1] invariant node inputs [p · present, present] of each atom's molecule; [n, 0] for P = 0."""
        n = self.batch.shape[0]
        if num_properties == 0:
            return like.new_zeros(n, 0)
        present = self.presence()[:, None]
        if self.properties is None:
            values = like.new_zeros(self.num_molecules, num_properties)
        else:
            if self.properties.shape[1] != num_properties:
                raise ValueError(f"condition has {self.properties.shape[1]} properties, "
                                 f"the backbone was built for {num_properties}")
            values = self.properties.to(like)
        # where, not a product: an absent molecule's placeholder property may be NaN
        masked = torch.where(present, values, torch.zeros_like(values))
        return torch.cat([masked, present.to(like.dtype)], dim=1)[self.batch]

    def to(self, device: torch.device | str) -> MoleculeCondition:
        def move(t):
            return None if t is None else t.to(device)
        return MoleculeCondition(move(self.batch), move(self.edge_index), move(self.properties), move(self.present))
