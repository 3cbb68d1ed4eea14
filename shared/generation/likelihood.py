"""``mldm evaluate ... nll=true``: the diffusion prior's −ELBO on held-out data, in bits per dimension.

A modality hands over :class:`NLLTerm` s: for each latent prior, the encoded held-out items (the first
stage's posterior mean, normalised as the prior was trained), their conditions and their space. For a
latent model this is the prior's bound on the latents, per latent degree of freedom (the first stage's
own likelihood is not part of it); for a pixel model with ``bin_width=2/255`` it is the usual image
bits/dim. Several priors of one model (the point-cloud global and point priors: log p(z₀, h) =
log p(z₀) + log p(h | z₀)) add up: their nats and their degrees of freedom are summed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shared.diffusion.elbo import negative_elbo

PARTS = ("reconstruction", "diffusion", "prior")


@dataclass
class NLLTerm:
    name: str                  # the prior's stage, e.g. "diffusion" or "global_prior"
    denoiser: object           # the trained (EMA) denoiser
    x0: torch.Tensor           # held-out items as the prior sees them
    cond: object = None
    space: object = None
    bin_width: float | None = None  # quantised data (pixels): −log P(bin) instead of a density


@torch.no_grad()
def prior_nll(terms: list[NLLTerm], steps: int, seed: int = 0) -> dict:
    """Bits per dimension of every term and of their sum, with the reconstruction / diffusion / prior parts,
    for the ``steps``-level hierarchy evenly spaced in log-SNR (every level evaluated: an upper bound that
    tightens toward the continuous-time one as ``steps`` grows; on a Gaussian with the exact denoiser it is
    0.03-0.05 bits/dim above the true NLL at 2,000 steps, 0.3 at 200; Monte-Carlo over the levels was ±0.3 at
    200 calls)."""
    generator = torch.Generator().manual_seed(seed)
    metrics, totals, total_dof = {}, dict.fromkeys(PARTS, 0.0), 0.0
    for term in terms:
        nats = negative_elbo(term.denoiser, term.x0, num_steps=steps, space=term.space, cond=term.cond,
                             generator=generator, spacing="uniform_log_snr")
        dof = float(nats["dof"].sum())
        parts = {part: float(nats[part].sum()) for part in PARTS}
        if term.bin_width is not None:  # the probability of the 8-bit bin: log(bin) per dimension
            parts["reconstruction"] -= dof * math.log(term.bin_width)
        if not all(math.isfinite(v) for v in parts.values()):
            raise ValueError(f"the {term.name} prior's ELBO is not finite on these items ({parts})")
        for part, value in parts.items():
            totals[part] += value
            if len(terms) > 1:  # several priors: each one's own figures too
                metrics[f"{term.name}.{part}_bpd"] = value / (dof * math.log(2))
        if len(terms) > 1:
            metrics[f"{term.name}.bits_per_dim"] = sum(parts.values()) / (dof * math.log(2))
        total_dof += dof
    metrics.update({f"{part}_bpd": value / (total_dof * math.log(2)) for part, value in totals.items()})
    metrics["bits_per_dim"] = sum(totals.values()) / (total_dof * math.log(2))
    metrics["nll_items"] = int(len(terms[0].x0) if terms[0].space is None else terms[0].space.num_items(terms[0].x0))
    metrics["nll_steps"] = steps
    return metrics
