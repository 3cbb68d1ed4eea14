"""Every sampler against the Gaussian oracle, and the contract every sampler honours."""
import functools

import pytest
import torch
from omegaconf import OmegaConf

from oracles import GaussianOracle
from shared.diffusion.adaptive import sample_rk45
from shared.diffusion.diffusers_adapter import sample_diffusers
from shared.diffusion.forward_process import posterior
from shared.cli.samplers import ddpm as ddpm_sampler
from shared.diffusion.sampler_compositions import sample_repaint
from shared.diffusion.samplers import refine_to_mode, sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler, sample_heun
from shared.diffusion.schedules import CosineSchedule, KarrasSchedule, LinearSchedule, PolynomialSchedule
from shared.diffusion.spaces import EuclideanSpace, ZeroCoMSpace

MEAN, STD = 0.5, 1.0
# (sampler, steps, tolerance on mean and std). DDIM and Euler are first order: at 50 steps DDIM's
# std is 4-6% low (each deterministic step contracts the variance, Cauchy–Schwarz) and stochastic
# Euler needs ~200; the second-order and multistep solvers are within ~1% at 50 steps.
SAMPLERS = {
    "ddpm": (sample_ddpm, 1000, 0.02),
    "resample_ddpm": (functools.partial(sample_repaint, resample=3), 1000, 0.02),  # RePaint keeps the marginals
    "ddim": (sample_ddim, 50, 0.06),
    "ddim_eta1": (functools.partial(sample_ddim, eta=1.0), 200, 0.03),
    "euler_churn": (functools.partial(sample_euler, churn=10.0), 200, 0.03),
    "heun": (sample_heun, 50, 0.02),
    "heun_churn": (functools.partial(sample_heun, churn=10.0), 50, 0.02),
    "dpmpp_2m": (sample_dpmpp_2m, 50, 0.02),
    "rk45": (sample_rk45, 50, 0.02),
    "diffusers_dpm": (functools.partial(sample_diffusers, scheduler_name="DPMSolverMultistepScheduler"), 50, 0.02),
    "diffusers_ddpm": (functools.partial(sample_diffusers, scheduler_name="DDPMScheduler"), 1000, 0.02),
    "diffusers_euler": (functools.partial(sample_diffusers, scheduler_name="EulerDiscreteScheduler"), 50, 0.06),
}
SCHEDULES = {"linear": LinearSchedule(), "cosine": CosineSchedule(), "karras": KarrasSchedule()}


# a diffusers scheduler needs a 1000-step beta grid; EDM's σ(t) has none
CASES = [(a, b) for a in SAMPLERS for b in SCHEDULES if not (a.startswith("diffusers") and b == "karras")]


@pytest.mark.parametrize("sampler_name,schedule_name", CASES)
def test_gaussian_oracle_statistics(sampler_name, schedule_name):
    sampler, steps, tol = SAMPLERS[sampler_name]
    if sampler_name.endswith("ddpm") and schedule_name != "linear":
        steps = 300  # ancestral sampling is exact in distribution; 1000 steps are for the linear grid
    schedule = SCHEDULES[schedule_name]
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(8192, 4, generator=g)
    x = sampler(GaussianOracle(schedule, MEAN, STD), x_T, schedule, steps, generator=g)
    assert abs(x.mean().item() - MEAN) < tol * STD + 0.01  # + 3 standard errors of the mean
    assert abs(x.std().item() / STD - 1) < tol


@pytest.mark.parametrize("layout", ["sparse", "padded"])
@pytest.mark.parametrize("sampler_name", ["ddpm", "ddim", "heun", "dpmpp_2m", "rk45"])
def test_gaussian_oracle_in_zero_centre_of_mass_space(sampler_name, layout):
    """Positions: zero CoM and variance std² per degree of freedom; features: plain Gaussian."""
    sampler, steps, tol = SAMPLERS[sampler_name]
    schedule, g = PolynomialSchedule(), torch.Generator().manual_seed(1)
    sizes = torch.tensor([3, 7, 5, 9] * 256)
    if layout == "sparse":
        space = ZeroCoMSpace(batch=torch.repeat_interleave(torch.arange(len(sizes)), sizes), position_dims=3)
        x_T = space.randn_like(torch.zeros(int(sizes.sum()), 5), g)
    else:
        mask = torch.arange(9)[None, :] < sizes[:, None]
        space = ZeroCoMSpace(mask=mask, position_dims=3)
        x_T = space.randn_like(torch.zeros(len(sizes), 9, 5), g)
    oracle = GaussianOracle(schedule, torch.tensor([0.0, 0.0, 0.0, MEAN, MEAN]), STD, space=space)
    x = sampler(oracle, x_T, schedule, steps if sampler_name != "ddpm" else 300, space=space, generator=g)
    positions, features = x[..., :3], x[..., 3:]
    com = space.sum_per_item(torch.cat([positions, torch.zeros_like(features)], -1)[..., :3])
    assert com.abs().max() < 1e-4, "sampling must keep the centre of mass at zero"
    position_sq = space.sum_per_item(positions**2)
    position_dof = (space.dof(x) - sizes * 2).sum()  # (n − 1)·3 per item
    assert abs((position_sq.sum() / position_dof).sqrt().item() / STD - 1) < tol
    feature_values = features[space.mask] if layout == "padded" else features
    assert abs(feature_values.mean().item() - MEAN) < tol + 0.02
    assert abs(feature_values.std().item() / STD - 1) < tol


SAMPLER_FNS = [sample_ddpm, sample_ddim, sample_euler, sample_heun, sample_dpmpp_2m, sample_rk45]


@pytest.mark.parametrize("shape", [(3, 5), (3, 2, 5), (3, 2, 4, 4), (3, 2, 2, 4, 4)], ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("sampler", SAMPLER_FNS, ids=lambda f: f.__name__)
def test_contract_any_rank_deterministic_with_callback(sampler, shape):
    schedule = CosineSchedule()
    oracle = GaussianOracle(schedule, 0.3, 0.7)
    runs, reports = [], []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        x_T = torch.randn(shape, generator=g)
        runs.append(sampler(oracle, x_T, schedule, 10, generator=g, callback=reports.append))
    assert runs[0].shape == shape and runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1]), "same generator seed, same samples"
    assert torch.isfinite(runs[0]).all()
    assert reports and {"step", "t", "x", "denoised"} <= set(reports[0])
    assert reports[-1]["x"].shape == shape


def ddpm(denoiser, x_T, schedule, steps, generator=None, **options):
    """DDPM as ``sampler=ddpm`` with ``options`` (noise_scale, resample, refine_steps, refine_time) builds it."""
    return ddpm_sampler(**options)(denoiser, x_T, schedule, steps, generator=generator)


def test_ddpm_config_without_options_is_the_plain_sampler():
    assert ddpm_sampler() is sample_ddpm


@pytest.mark.parametrize("noise_scale", [1.0, 0.5, 0.0])
def test_ddpm_noise_scale_follows_the_variance_recursion(noise_scale):
    """With Gaussian data x̂_0 is linear in x_t, so a step x_s = a x_t + b x̂_0 + λ σ_post ε maps the
    variance v ↦ (a + b·gain)² v + λ² σ_post²: the scaled sampler's final std in closed form."""
    schedule = CosineSchedule()
    oracle, times = GaussianOracle(schedule, 0.0, STD), schedule.sampling_times(50)
    variance = 1.0
    for t, s in zip(times[:-1], times[1:]):
        if s == 0:  # the last step returns x̂_0
            a_t, s_t = schedule.alpha_sigma(t)
            variance *= float(a_t * STD**2 / (a_t**2 * STD**2 + s_t**2)) ** 2
            break
        ones = torch.ones(1, dtype=torch.float64)
        mean, std = posterior(schedule, ones, torch.zeros(1, dtype=torch.float64), t, s)  # a·1 + b·0
        b = posterior(schedule, 0 * ones, ones, t, s)[0]
        gain = oracle(ones, t)  # x̂_0 per unit x_t
        variance = float((mean + b * gain) ** 2 * variance + noise_scale**2 * std**2)
    g = torch.Generator().manual_seed(0)
    x = ddpm(oracle, torch.randn(16384, 2, generator=g), schedule, times, generator=g, noise_scale=noise_scale)
    assert abs(x.std().item() / variance**0.5 - 1) < 0.02


def test_explicit_grid_is_validated_and_a_single_point_grid_is_identity():
    schedule = CosineSchedule()
    oracle = GaussianOracle(schedule)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="decreasing"):
        sample_ddim(oracle, x, schedule, torch.tensor([0.5, 0.7, 0.0]))
    assert torch.equal(sample_ddim(oracle, x, schedule, torch.tensor([0.0])), x)


def test_last_step_returns_the_clean_estimate():
    """Even where ᾱ(0) < 1 (polynomial schedule) the sampler ends on x̂_0."""
    schedule = PolynomialSchedule(precision=1e-2)
    seen = []
    x = sample_dpmpp_2m(GaussianOracle(schedule), torch.randn(5, 3), schedule, 5, callback=seen.append)
    torch.testing.assert_close(x, seen[-1]["denoised"])


def test_core_has_no_modality_code_and_no_image_only_reshapes():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "shared"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+modalities", text, re.M), f"{path} imports a modality"
        assert not re.search(r"(reshape|view)\(-1,\s*1,\s*1,\s*1\)", text), f"{path} has an image-only reshape"


def test_euclidean_space_is_the_default_noise():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(EuclideanSpace().randn_like(torch.zeros(2, 3), g1), torch.randn(2, 3, generator=g2))


def test_ddpm_resample_below_one_is_named_in_the_error():
    schedule = CosineSchedule()
    with pytest.raises(ValueError, match="sampler.resample"):
        ddpm(GaussianOracle(schedule), torch.randn(4, 2), schedule, 10, resample=0)


def test_ddpm_noise_scale_per_channel_scales_each_channel_alone():
    """A list scales the fresh noise per channel of the last axis: under an elementwise oracle each channel
    equals, exactly, that channel of a run at its own scalar (the same draws, scaled); a wrong length is named."""
    schedule = CosineSchedule()
    oracle = GaussianOracle(schedule, MEAN, STD)
    x_T = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))

    def run(noise_scale):
        return ddpm(oracle, x_T, schedule, 30, generator=torch.Generator().manual_seed(1),
                           noise_scale=noise_scale)

    mixed = run(OmegaConf.create([1.0, 0.0, 0.5]))
    for channel, scalar in enumerate([1.0, 0.0, 0.5]):
        torch.testing.assert_close(mixed[:, channel], run(scalar)[:, channel])
    with pytest.raises(ValueError, match="noise_scale .*one scale per channel"):
        run([0.6, 1.0])


def gaussian_contraction(schedule, t: float) -> float:
    """c = α²s² / (α²s² + σ²): x̂_0(α_t x, t) = μ + c (x − μ) for N(μ, s²) data."""
    alpha, sigma = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha**2 * STD**2 / (alpha**2 * STD**2 + sigma**2))


def test_refine_to_mode_contracts_to_the_mode_in_closed_form():
    """For N(μ, s²) data x̂_0(α_t x, t) = μ + c (x − μ) with c = α²s² / (α²s² + σ²): k steps shrink
    x − μ by c^k (ascent on log p_t ends at its mode μ); sample_ddpm ends with those steps."""
    schedule, t = CosineSchedule(), 0.3
    oracle = GaussianOracle(schedule, MEAN, STD)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    c = gaussian_contraction(schedule, t)
    torch.testing.assert_close(refine_to_mode(oracle, x, schedule, t, 5, EuclideanSpace()), MEAN + c**5 * (x - MEAN))
    torch.testing.assert_close(refine_to_mode(oracle, x, schedule, t, 0, EuclideanSpace()), x)
    plain = sample_ddpm(oracle, x, schedule, 20, generator=torch.Generator().manual_seed(1))
    refined = ddpm(oracle, x, schedule, 20, generator=torch.Generator().manual_seed(1),
                          refine_steps=3, refine_time=t)
    torch.testing.assert_close(refined, MEAN + c**3 * (plain - MEAN))
    with pytest.raises(ValueError, match="sampler.refine_steps"):
        ddpm(oracle, x, schedule, 5, refine_steps=-1)
    with pytest.raises(ValueError, match="sampler.refine_time"):
        ddpm(oracle, x, schedule, 5, refine_steps=2, refine_time=1.5)


def test_annealed_refinement_runs_its_stages_in_turn_in_closed_form():
    """refine_steps [k1, k2] at refine_time [t1, t2] shrinks x − μ by c(t1)^k1 · c(t2)^k2; a config's lists work
    as Python lists do, and lists of two lengths are named in the error."""
    schedule, times, steps = CosineSchedule(), [0.3, 0.05], [3, 2]
    oracle = GaussianOracle(schedule, MEAN, STD)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))

    plain = sample_ddpm(oracle, x, schedule, 20, generator=torch.Generator().manual_seed(1))
    expected = MEAN + gaussian_contraction(schedule, 0.3) ** 3 * gaussian_contraction(schedule, 0.05) ** 2 * (plain - MEAN)
    for refine_steps, refine_time in [(steps, times), (OmegaConf.create(steps), OmegaConf.create(times))]:
        refined = ddpm(oracle, x, schedule, 20, generator=torch.Generator().manual_seed(1),
                              refine_steps=refine_steps, refine_time=refine_time)
        torch.testing.assert_close(refined, expected)
    one_number = ddpm(oracle, x, schedule, 20, generator=torch.Generator().manual_seed(1), refine_steps=2,
                             refine_time=times)   # that many steps at each listed time; 0 turns them off
    torch.testing.assert_close(one_number, MEAN + (gaussian_contraction(schedule, 0.3) * gaussian_contraction(
        schedule, 0.05)) ** 2 * (plain - MEAN))
    torch.testing.assert_close(ddpm(oracle, x, schedule, 20, generator=torch.Generator().manual_seed(1),
                                           refine_steps=0, refine_time=OmegaConf.create(times)), plain)
    with pytest.raises(ValueError, match="one time per stage"):
        ddpm(oracle, x, schedule, 5, refine_steps=[3, 2], refine_time=[0.3])
    with pytest.raises(ValueError, match="sampler.refine_time"):
        ddpm(oracle, x, schedule, 5, refine_steps=[3, 2], refine_time=[0.3, 0.0])


def test_progress_bar_counts_every_step_and_keeps_the_callers_callback():
    import io

    from shared.generation.sampler import with_progress

    schedule = CosineSchedule()
    oracle, x_T, stream, seen = GaussianOracle(schedule), torch.randn(4, 2), io.StringIO(), []
    x = with_progress(sample_ddim, disable=False, file=stream, mininterval=0, miniters=1)(oracle, x_T, schedule, 10, callback=seen.append)
    assert "10/10" in stream.getvalue() and len(seen) == 10
    assert torch.equal(x, sample_ddim(oracle, x_T, schedule, 10))
