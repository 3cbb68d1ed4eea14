"""The ELBO with the exact denoiser approaches the data entropy; every term is what the derivation says."""
import math

import pytest
import torch

from oracles import GaussianOracle
from shared.diffusion.elbo import bits_per_dim, elbo_grid, negative_elbo
from shared.diffusion.schedules import CosineSchedule, LinearSchedule, PolynomialSchedule
from shared.diffusion.spaces import ZeroCoMSpace
from shared.generation.likelihood import NLLTerm, prior_nll

STD = 0.3
ENTROPY_BPD = 0.5 * math.log2(2 * math.pi * math.e * STD**2)  # differential entropy of N(μ, s²), bits per dim


def exact_nll_bpd(x0, mean, dof):
    """−log N(x0; mean, s²) of the very samples used, so sampling noise of x0 cancels in the gap."""
    centred = (x0 - mean).flatten(1)
    nats = 0.5 * (centred**2).sum(1) / STD**2 + 0.5 * dof * math.log(2 * math.pi * STD**2)
    return (nats / (dof * math.log(2))).mean().item()


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule(), PolynomialSchedule()],
                         ids=["linear", "cosine", "polynomial"])
def test_elbo_of_exact_denoiser_approaches_entropy(schedule):
    """The bound is above the exact NLL and the gap closes like 1/T (~0.2 bits/dim at T = 250)."""
    g = torch.Generator().manual_seed(0)
    x0 = 0.7 + STD * torch.randn(2000, 4, generator=g)
    nll = exact_nll_bpd(x0, 0.7, 4)
    assert nll == pytest.approx(ENTROPY_BPD, abs=0.03)
    gaps = []
    for steps in (250, 2000):
        terms = negative_elbo(GaussianOracle(schedule, 0.7, STD), x0, steps, generator=g, spacing="uniform_log_snr")
        gaps.append(bits_per_dim(terms["total"], terms["dof"]).mean().item() - nll)
    assert gaps[1] < gaps[0] / 3, "a finer hierarchy must tighten the bound"
    assert -0.01 < gaps[1] < 0.05, f"−ELBO exceeds the NLL by {gaps[1]:.4f} bits/dim"


def test_elbo_in_zero_centre_of_mass_space_counts_n_minus_one_positions():
    schedule, g = CosineSchedule(), torch.Generator().manual_seed(1)
    sizes = torch.tensor([4, 6, 9] * 100)
    space = ZeroCoMSpace(batch=torch.repeat_interleave(torch.arange(len(sizes)), sizes), position_dims=3)
    x0 = STD * space.randn_like(torch.zeros(int(sizes.sum()), 3), g)  # isotropic Gaussian in the subspace
    terms = negative_elbo(GaussianOracle(schedule, 0.0, STD, space=space), x0, 2000, space=space, generator=g,
                          spacing="uniform_log_snr")
    assert torch.equal(terms["dof"], (sizes - 1).double() * 3)
    # exact NLL in the subspace: ‖x‖²/2s² + ½·dof·log(2πs²) with dof = (n − 1)·3
    nats = 0.5 * space.sum_per_item(x0**2).double() / STD**2 + 0.5 * terms["dof"] * math.log(2 * math.pi * STD**2)
    nll = (nats / (terms["dof"] * math.log(2))).mean().item()
    gap = bits_per_dim(terms["total"], terms["dof"]).mean().item() - nll
    assert -0.01 < gap < 0.05


def test_discrete_bound_of_the_ddpm_grid_is_a_looser_upper_bound():
    schedule, g = LinearSchedule(), torch.Generator().manual_seed(2)
    x0 = STD * torch.randn(2000, 4, generator=g)
    terms = negative_elbo(GaussianOracle(schedule, 0.0, STD), x0, generator=g)  # the T = 1000 model's grid
    assert torch.allclose(elbo_grid(schedule, 1000), torch.arange(1, 1001, dtype=torch.float64) / 1000)
    bpd = bits_per_dim(terms["total"], terms["dof"]).mean().item()
    assert bpd > ENTROPY_BPD + 0.1  # its first steps' SNR ratios are large, so it is loose


def test_prior_term_is_the_closed_form_kl():
    schedule = PolynomialSchedule(precision=1e-2)  # a visible ᾱ_1 = s makes the prior term non-trivial
    x0 = torch.tensor([[1.0, -2.0, 0.5]])
    terms = negative_elbo(GaussianOracle(schedule), x0, 10)
    ab = schedule.alpha_bar(torch.tensor(1.0, dtype=torch.float64)).item()
    expected = 0.5 * sum((1 - ab) + ab * v**2 - 1 - math.log(1 - ab) for v in [1.0, -2.0, 0.5])
    assert terms["prior"].item() == pytest.approx(expected, rel=1e-6)


def test_monte_carlo_time_estimate_is_unbiased():
    schedule, g = CosineSchedule(), torch.Generator().manual_seed(3)
    x0 = STD * torch.randn(500, 2, generator=g)
    full = negative_elbo(GaussianOracle(schedule, 0.0, STD), x0, 200, generator=g, spacing="uniform_log_snr")
    sampled = negative_elbo(GaussianOracle(schedule, 0.0, STD), x0, 200, generator=g, spacing="uniform_log_snr",
                            num_time_samples=4000)
    # the per-step terms vary by ~100% over the grid: 4000 draws leave ~1.6% standard error
    assert sampled["diffusion"].mean().item() == pytest.approx(full["diffusion"].mean().item(), rel=0.05)


def test_bits_per_dim_with_quantisation_bins():
    nll, dof = torch.tensor([100.0]), torch.tensor([10.0], dtype=torch.float64)
    assert bits_per_dim(nll, dof).item() == pytest.approx(100 / (10 * math.log(2)))
    assert bits_per_dim(nll, dof, bin_width=2 / 255).item() == pytest.approx(
        (100 - 10 * math.log(2 / 255)) / (10 * math.log(2)))


def test_prior_nll_pools_priors_by_their_degrees_of_freedom_and_counts_bins():
    """``mldm evaluate nll=true``'s reduction: two priors' nats and dimensions add up; a bin width adds
    −log2(bin) bits per dimension to the density's bound."""
    schedule, g = CosineSchedule(), torch.Generator().manual_seed(3)
    wide, narrow = 0.7 + STD * torch.randn(500, 4, generator=g), 0.1 * STD * torch.randn(500, 2, generator=g)
    terms = [NLLTerm("a", GaussianOracle(schedule, 0.7, STD), wide),
             NLLTerm("b", GaussianOracle(schedule, 0.0, 0.1 * STD), narrow)]
    pooled = prior_nll(terms, steps=2000)
    assert 0 < pooled["a.bits_per_dim"] - exact_nll_bpd(wide, 0.7, 4) < 0.1
    assert pooled["bits_per_dim"] == pytest.approx((4 * pooled["a.bits_per_dim"] + 2 * pooled["b.bits_per_dim"]) / 6)
    assert pooled["bits_per_dim"] == pytest.approx(sum(pooled[f"{p}_bpd"] for p in ("reconstruction", "diffusion",
                                                                                        "prior")))
    binned = prior_nll([NLLTerm("a", GaussianOracle(schedule, 0.7, STD), wide, bin_width=2 / 255)], steps=2000)
    assert binned["bits_per_dim"] - pooled["a.bits_per_dim"] == pytest.approx(-math.log2(2 / 255), abs=0.02)
