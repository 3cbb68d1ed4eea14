"""GeoLDM's point-structured autoencoder (Xu et al. 2023, §4.1 and ``EGNN_encoder/decoder_QM9``).

Every atom gets a latent z_i = [z_x ∈ R³ (equivariant), z_h ∈ R^k (invariant)]. The encoder is an
EGNN over (one-hot atom type [, atomic number / charge_scale], positions): z_x's mean is its output
positions with each molecule's mean removed, z_h's mean and all log-variances come from an MLP head
on its invariant output. The decoder is an EGNN from (z_h, z_x) back to positions (zero CoM) and
atom-type logits (and, optionally, the charge feature, as GeoLDM's ``include_charges``).

z_x has one variance per *molecule* (GeoLDM sums a per-atom invariant over the molecule; we average
it, so the scale does not grow with size): with a shared σ the posterior of z_x is isotropic *within*
the zero-CoM subspace, a draw is mean + σ·(projected ε) and its KL to N(0, I) on that subspace has a
closed form over (n − 1)·3 degrees of freedom (EDM's ``gaussian_KL_for_dimension``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from modalities.molecule.egnn import EGNN
from modalities.molecule.elements import ATOMIC_NUMBERS, QM9_ELEMENTS
from shared.first_stage.autoencoder import DiagonalGaussian, LatentStatistics
from shared.diffusion.spaces import ZeroCoMSpace

POSITION_DIMS = 3


def _per_molecule(values: torch.Tensor, batch: torch.Tensor, num_molecules: int) -> torch.Tensor:
    """Σ over each molecule's atoms of per-atom values [n] -> [M]."""
    return values.new_zeros(num_molecules).index_add_(0, batch, values)


def position_rms(positions: torch.Tensor, batch: torch.Tensor, num_molecules: int) -> torch.Tensor:
    """[M] RMS of zero-CoM positions per degree of freedom, (Σ‖x_i‖² / ((n − 1)·3))^½, without gradient."""
    counts = torch.bincount(batch, minlength=num_molecules)
    dof = ((counts - 1) * POSITION_DIMS).clamp(min=1)
    return (_per_molecule(positions.detach().square().sum(1), batch, num_molecules) / dof).sqrt()


class MoleculePosterior(DiagonalGaussian):
    """q(z | molecule) over rows z[n, 3 + k]; items are molecules (``batch``), as in ZeroCoMSpace.

    ``logvar[:, :3]`` is constant within a molecule; draws of z_x stay in the zero-CoM subspace and
    ``kl``/``nll`` count positions over (n − 1)·3 dimensions, features over n·k.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, batch: torch.Tensor, num_molecules: int):
        super().__init__(mean, logvar)
        self.batch, self.num_molecules = batch, num_molecules
        self.space = ZeroCoMSpace(batch=batch, num_items=num_molecules)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean + self.std * self.space.randn_like(self.mean, generator)

    def _position_terms(self):
        counts = torch.bincount(self.batch, minlength=self.num_molecules).to(self.mean.dtype)
        dof = (counts - 1).clamp(min=0) * POSITION_DIMS
        logvar = self.logvar[:, 0].new_zeros(self.num_molecules).index_add_(0, self.batch, self.logvar[:, 0])
        return dof, logvar / counts.clamp(min=1)  # the molecule's (shared) log-variance

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(q ‖ N(0, I)) per molecule [M]: positions on the zero-CoM subspace, features per atom."""
        if other is not None:
            raise NotImplementedError("the molecule posterior's KL is to the standard normal only")
        dof, logvar = self._position_terms()
        mean_sq = _per_molecule(self.mean[:, :POSITION_DIMS].square().sum(1), self.batch, self.num_molecules)
        positions = 0.5 * (mean_sq + dof * (logvar.exp() - 1.0 - logvar))
        m, lv = self.mean[:, POSITION_DIMS:], self.logvar[:, POSITION_DIMS:]
        features = 0.5 * _per_molecule((m.square() + lv.exp() - 1.0 - lv).sum(1), self.batch, self.num_molecules)
        return positions + features

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """−log q(z) per molecule [M], z_x given in the zero-CoM subspace."""
        dof, logvar = self._position_terms()
        sq = _per_molecule((z[:, :POSITION_DIMS] - self.mean[:, :POSITION_DIMS]).square().sum(1),
                           self.batch, self.num_molecules)
        positions = 0.5 * (dof * (math.log(2 * math.pi) + logvar) + sq / logvar.exp())
        lv, residual = self.logvar[:, POSITION_DIMS:], z[:, POSITION_DIMS:] - self.mean[:, POSITION_DIMS:]
        per_atom = math.log(2 * math.pi) + lv + residual.square() / lv.exp()
        return positions + 0.5 * _per_molecule(per_atom.sum(1), self.batch, self.num_molecules)


@dataclass
class DecodedMolecule:
    positions: torch.Tensor            # [n, 3], zero CoM per molecule
    atom_logits: torch.Tensor          # [n, num_atom_types]
    charges: torch.Tensor | None       # [n] scaled atomic numbers, when the model decodes charges


class MoleculeAutoencoder(nn.Module):
    """Defaults follow GeoLDM on QM9 (k = 1, one encoder block, attention, tanh); GeoLDM uses hidden
    256 and a 9-block decoder, ``hidden``/``decoder_blocks`` scale down for tests and small runs."""

    def __init__(self, num_atom_types: int = len(QM9_ELEMENTS), latent_features: int = 1, hidden: int = 128,
                 encoder_blocks: int = 1, decoder_blocks: int = 4, inv_sublayers: int = 1,
                 include_charges: bool = False, elements: tuple[str, ...] = QM9_ELEMENTS,
                 charge_scale: float = 10.0, init_logvar: float = -6.0, min_relative_position_std: float = 0.0,
                 attention: bool = True, tanh: bool = True,
                 coords_range: float = 15.0, norm_constant: float = 1.0, normalization_factor: float = 1.0):
        super().__init__()
        if include_charges and len(elements) != num_atom_types:
            raise ValueError(f"{num_atom_types} atom types but {len(elements)} elements to take charges from")
        self.num_atom_types, self.latent_features, self.elements = num_atom_types, latent_features, tuple(elements)
        self.include_charges, self.charge_scale = include_charges, charge_scale
        # a floor on z_x's posterior std, as a fraction of each molecule's z_x RMS: the decoder then always
        # sees latents that far off and learns to pull them back onto valid geometry, the error the prior's
        # samples make. Relative, because an absolute floor is escaped by an encoder that scales z_x up.
        self.min_relative_position_std = min_relative_position_std
        if include_charges:
            self.register_buffer("atomic_numbers", torch.tensor([ATOMIC_NUMBERS[e] for e in elements]))
        egnn = dict(inv_sublayers=inv_sublayers, attention=attention, tanh=tanh, coords_range=coords_range,
                    norm_constant=norm_constant, normalization_factor=normalization_factor)
        atom_features = num_atom_types + int(include_charges)
        self.encoder = EGNN(atom_features, hidden, hidden, encoder_blocks, **egnn)
        # [logvar_x (one per atom, pooled per molecule), mean_h (k), logvar_h (k)]
        self.encoder_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 1 + 2 * latent_features))
        with torch.no_grad():  # start from a small, near-deterministic spread (as the shape VAEs)
            self.encoder_head[-1].bias[0] = init_logvar
            self.encoder_head[-1].bias[1 + latent_features:] = init_logvar
        self.decoder = EGNN(latent_features, hidden, atom_features, decoder_blocks, **egnn)
        # z_h gets the usual shift/scale. z_x gets one scalar scale and no shift: a shift would move the
        # centre of mass off zero and per-axis scales would break rotation equivariance.
        self.latent_stats = LatentStatistics(latent_features)
        self.position_stats = LatentStatistics(1)

    def atom_features(self, atom_type: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(atom_type, self.num_atom_types).float()
        if not self.include_charges:
            return one_hot
        return torch.cat([one_hot, self.charge_targets(atom_type)[:, None]], dim=1)

    def charge_targets(self, atom_type: torch.Tensor) -> torch.Tensor:
        """[n] atomic number / charge_scale: what the decoder's charge output regresses."""
        return self.atomic_numbers[atom_type].float() / self.charge_scale

    def encode(self, atom_type: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, edge_index: torch.Tensor,
               num_molecules: int | None = None) -> MoleculePosterior:
        num_molecules = int(num_molecules if num_molecules is not None else batch.max().item() + 1)
        space = ZeroCoMSpace(batch=batch, num_items=num_molecules)
        h = self.atom_features(atom_type).to(pos.dtype)
        h_out, x_out = self.encoder(h, space.project(pos), edge_index)
        head, k = self.encoder_head(h_out), self.latent_features
        counts = torch.bincount(batch, minlength=num_molecules).clamp(min=1)
        logvar_x = (_per_molecule(head[:, 0], batch, num_molecules) / counts)[batch, None]  # molecule mean
        positions = space.project(x_out)
        if self.min_relative_position_std > 0:  # σ² = σ_learned² + σ_min²
            rms = position_rms(positions, batch, num_molecules)
            floor = 2 * torch.log(self.min_relative_position_std * rms.clamp_min(1e-6))[batch, None]
            logvar_x = torch.logaddexp(logvar_x, floor.to(logvar_x))
        mean = torch.cat([positions, head[:, 1:1 + k]], dim=1)
        logvar = torch.cat([logvar_x.expand(-1, POSITION_DIMS), head[:, 1 + k:]], dim=1)
        return MoleculePosterior(mean, logvar, batch, num_molecules)

    def decode(self, z: torch.Tensor, batch: torch.Tensor, edge_index: torch.Tensor,
               num_molecules: int | None = None) -> DecodedMolecule:
        space = ZeroCoMSpace(batch=batch, num_items=num_molecules)
        h_out, x_out = self.decoder(z[:, POSITION_DIMS:], z[:, :POSITION_DIMS], edge_index)
        charges = h_out[:, self.num_atom_types] if self.include_charges else None
        return DecodedMolecule(space.project(x_out), h_out[:, :self.num_atom_types], charges)

    def forward(self, atom_type: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, edge_index: torch.Tensor,
                sample: bool = True, generator: torch.Generator | None = None):
        """Training pass -> (DecodedMolecule, posterior)."""
        posterior = self.encode(atom_type, pos, batch, edge_index)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z, batch, edge_index, posterior.num_molecules), posterior

    # -- the normalised latent the diffusion model sees ------------------------------------------------

    def normalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.position_stats.normalize(z[:, :POSITION_DIMS]),
                          self.latent_stats.normalize(z[:, POSITION_DIMS:])], dim=1)

    def denormalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.position_stats.denormalize(z[:, :POSITION_DIMS]),
                          self.latent_stats.denormalize(z[:, POSITION_DIMS:])], dim=1)

    @torch.no_grad()
    def estimate_latent_statistics(self, z: torch.Tensor, batch: torch.Tensor, per_channel: bool = False,
                                   center: bool = True) -> None:
        """Set the z_h shift/scale from latents [n, 3 + k] (``batch``: molecule index per row, unique
        over the whole set) and z_x's scalar scale from its RMS per zero-CoM degree of freedom (a plain
        std over 3n coordinates would count 3 dimensions per molecule too many)."""
        self.latent_stats.estimate(z[:, POSITION_DIMS:], per_channel=per_channel, center=center)
        counts = torch.bincount(batch)
        dof = ((counts - 1).clamp(min=0) * POSITION_DIMS).sum().double()
        rms = (z[:, :POSITION_DIMS].double().square().sum() / dof.clamp(min=1)).sqrt()
        self.position_stats.shift.zero_()
        self.position_stats.scale.fill_(float(1.0 / rms.clamp_min(1e-12)))
        self.position_stats.estimated.fill_(True)


def molecule_autoencoder_loss(atom_type: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor,
                              reconstruction: DecodedMolecule, posterior: MoleculePosterior,
                              kl_weight: float = 0.01, charges: torch.Tensor | None = None,
                              charge_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """GeoLDM's first-stage objective with each term explicit, all means per atom (float32 scalars).

    position = mean_i ‖x̂_i − x_i‖² with x moved to zero CoM; atom_type = mean cross-entropy;
    charge = mean (ĉ_i − c_i)² when decoded (``charges``: the scaled targets); kl = Σ_molecules KL / atoms
    (positions over (n − 1)·3 dims); total = position + atom_type + charge_weight·charge + kl_weight·kl
    (GeoLDM's default kl_weight 0.01). ``accuracy`` (atom types, no gradient) is for logging.
    """
    target = ZeroCoMSpace(batch=batch, num_items=posterior.num_molecules).project(pos.float())
    out = {"position": (reconstruction.positions.float() - target).square().sum(1).mean(),
           "atom_type": F.cross_entropy(reconstruction.atom_logits.float(), atom_type)}
    total = out["position"] + out["atom_type"]
    if reconstruction.charges is not None:
        if charges is None:
            raise ValueError("the model decodes charges: pass charges=model.charge_targets(atom_type)")
        out["charge"] = (reconstruction.charges.float() - charges.float()).square().mean()
        total = total + charge_weight * out["charge"]
    out["kl"] = posterior.kl().float().sum() / atom_type.shape[0]
    out["total"] = total + kl_weight * out["kl"]
    out["accuracy"] = (reconstruction.atom_logits.argmax(1) == atom_type).float().mean().detach()
    return out
