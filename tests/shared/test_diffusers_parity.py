"""Acceptance: our samplers reproduce diffusers' schedulers step for step.

Same network, same timesteps, same noise: a full sampling run of our DDPM / DDIM (η = 0, 1) /
DPM-Solver++(2M) must end within 1e-4 (max abs) of diffusers' DDPMScheduler / DDIMScheduler /
DPMSolverMultistepScheduler, for ε- and v-prediction. The adapter ``sample_diffusers`` must in turn
agree with our own samplers on the grid the diffusers scheduler picks.

Precision notes:
* diffusers accumulates ᾱ in float32, so the reference runs build our schedule from *their*
  ``alphas_cumprod``; one case checks our own float64 ``ScaledLinearSchedule`` against a scheduler
  built by ``make_scheduler``.
* The network has a realistic output scale: the exact ε / v of data ~ N(0, 0.5²) plus a small
  random MLP. With a toy network (say, zeros) the ε → x̂_0 conversion at α_T ≈ 0.006 would blow
  up the rounding and absolute differences would mean nothing.
* Noise: both sides draw one ``randn`` of the sample's shape per non-final step from identically
  seeded generators (diffusers' DDIM with η > 0 also draws at the final step, after everything else).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from shared.diffusion.denoiser import Denoiser  # noqa: E402
from shared.diffusion.diffusers_adapter import make_scheduler, sample_diffusers  # noqa: E402
from shared.diffusion.parameterization import EpsilonPrediction, VPrediction  # noqa: E402
from shared.diffusion.samplers import sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler  # noqa: E402
from shared.diffusion.schedules import DiscreteSchedule, LinearSchedule, ScaledLinearSchedule  # noqa: E402

TOL = 1e-4
DATA_STD = 0.5
SEED = 1234
SHAPES = [(8, 8), (2, 3, 4, 4)]
PREDICTIONS = ["epsilon", "v_prediction"]
PARAMETERIZATION = {"epsilon": EpsilonPrediction, "v_prediction": VPrediction}
SCALED_LINEAR = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


# --------------------------------------------------------------------------------------------------
# helpers


class OracleMLP(nn.Module):
    """``backbone(x, time)``: exact ε (or v) for data ~ N(0, DATA_STD²) + 0.1 · a fixed random MLP.

    ``time`` is diffusers' timestep index (float); the oracle reads ᾱ at ``time.round()``.
    """

    def __init__(self, alphas_cumprod, prediction_type: str, item_shape, hidden: int = 64, seed: int = 0):
        super().__init__()
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64).clone())
        dim = math.prod(item_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def oracle(self, x, time):
        index = time.round().long().clamp(0, len(self.alphas_cumprod) - 1)
        alpha_bar = self.alphas_cumprod[index].reshape((-1,) + (1,) * (x.ndim - 1))
        alpha, sigma = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
        var = alpha_bar * DATA_STD**2 + sigma**2  # Var[x_t] per element
        x64 = x.double()
        if self.prediction_type == "epsilon":
            out = sigma * x64 / var  # E[ε | x_t]
        else:
            out = alpha * sigma * (1.0 - DATA_STD**2) * x64 / var  # E[v | x_t] = α E[ε|x] − σ E[x_0|x]
        return out.to(x.dtype)

    def forward(self, x, time, cond=None):
        time = torch.as_tensor(time, dtype=torch.float32).expand(x.shape[0])
        features = torch.cat([x.flatten(1), time[:, None] / 1000.0], dim=1)
        return self.oracle(x, time) + 0.1 * self.mlp(features).view_as(x)


def initial_noise(shape, seed=SEED):
    """x_T and two generators in the same state (each advanced past one draw of ``shape``)."""
    g_ref, g_ours = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=g_ref)
    assert torch.equal(torch.randn(shape, generator=g_ours), x_T)
    return x_T, g_ref, g_ours


@torch.no_grad()
def run_diffusers(scheduler, net, x_T, steps, generator, **step_kwargs):
    """The plain diffusers sampling loop (init_noise_sigma is 1 for the VP schedulers used here)."""
    scheduler.set_timesteps(steps)
    assert float(scheduler.init_noise_sigma) == 1.0
    x = x_T.clone()
    for k in scheduler.timesteps:
        output = net(x, k.float().expand(x.shape[0]))
        x = scheduler.step(output, k, x, generator=generator, **step_kwargs).prev_sample
    return x


def our_times(schedule, scheduler):
    """The scheduler's (integer) timesteps as our continuous times, then t = 0."""
    times = schedule.t_from_index(scheduler.timesteps.double())
    return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


def max_abs_diff(a, b):
    assert a.shape == b.shape
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return (a.double() - b.double()).abs().max().item()


def check_close(ours, ref, label):
    diff = max_abs_diff(ours, ref)
    print(f"[diffusers parity] {label}: max|Δ| = {diff:.3e} (output max|x| = {ref.abs().max().item():.3f})")
    assert diff <= TOL, f"{label}: max abs difference {diff:.3e} > {TOL:g}"
    # the runs must have produced something data-like, not a degenerate constant
    assert 0.05 < ref.std().item() < 5.0
    return diff


SAMPLERS = {
    # name: (diffusers class, steps, our sampler, extra kwargs for ours, extra kwargs for diffusers' step)
    "ddpm": (DDPMScheduler, 1000, sample_ddpm, {}, {}),
    "ddim_eta0": (DDIMScheduler, 50, sample_ddim, {"eta": 0.0}, {"eta": 0.0}),
    "ddim_eta1": (DDIMScheduler, 50, sample_ddim, {"eta": 1.0}, {"eta": 1.0}),
    "dpmpp_2m_20": (DPMSolverMultistepScheduler, 20, sample_dpmpp_2m, {}, {}),
    "dpmpp_2m_10": (DPMSolverMultistepScheduler, 10, sample_dpmpp_2m, {}, {}),
}


def adapter_scheduler(name, schedule, prediction_type):
    return make_scheduler(name, schedule, prediction_type=prediction_type)


def reference_scheduler(cls, prediction_type, **betas):
    config = dict(num_train_timesteps=1000, prediction_type=prediction_type, **betas)
    if cls is not DPMSolverMultistepScheduler:
        config["clip_sample"] = False
    return cls(**config)


def compare_with_reference(sampler, prediction_type, shape, scheduler, schedule, label):
    """Run the diffusers loop with ``scheduler`` and our sampler with ``schedule``; same net, same noise."""
    _, steps, ours_fn, ours_kwargs, step_kwargs = SAMPLERS[sampler]
    net = OracleMLP(scheduler.alphas_cumprod, prediction_type, shape[1:])
    x_T, g_ref, g_ours = initial_noise(shape)

    ref = run_diffusers(scheduler, net, x_T, steps, g_ref, **step_kwargs)
    times = our_times(schedule, scheduler)
    assert len(times) == steps + 1
    denoiser = Denoiser(net, schedule, PARAMETERIZATION[prediction_type]())
    ours = ours_fn(denoiser, x_T, schedule, times, generator=g_ours, **ours_kwargs)
    return check_close(ours, ref, label)


# --------------------------------------------------------------------------------------------------
# our samplers vs diffusers' schedulers


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampler_matches_diffusers_linear(sampler, prediction_type, shape):
    cls = SAMPLERS[sampler][0]
    scheduler = reference_scheduler(cls, prediction_type, beta_schedule="linear")
    schedule = DiscreteSchedule(scheduler.alphas_cumprod)
    compare_with_reference(sampler, prediction_type, shape, scheduler, schedule,
                           f"{sampler} linear {prediction_type} {shape}")


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1", "dpmpp_2m_20"])
def test_sampler_matches_diffusers_scaled_linear(sampler, prediction_type):
    cls = SAMPLERS[sampler][0]
    scheduler = reference_scheduler(cls, prediction_type, **SCALED_LINEAR)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod)
    compare_with_reference(sampler, prediction_type, (2, 3, 4, 4), scheduler, schedule,
                           f"{sampler} scaled_linear {prediction_type}")


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta0", "dpmpp_2m_20"])
def test_own_scaled_linear_schedule_matches_make_scheduler(sampler, prediction_type):
    """Our float64 ScaledLinearSchedule, used as is, vs diffusers built from it by make_scheduler.

    diffusers re-accumulates ᾱ from float32 betas; the two still agree within the tolerance.
    """
    schedule = ScaledLinearSchedule()
    cls = SAMPLERS[sampler][0]
    scheduler = adapter_scheduler(cls.__name__, schedule, prediction_type)
    compare_with_reference(sampler, prediction_type, (8, 8), scheduler, schedule,
                           f"{sampler} own ScaledLinearSchedule {prediction_type}")


@pytest.mark.parametrize("schedule_cls, betas", [
    (LinearSchedule, dict(beta_schedule="linear")),
    (ScaledLinearSchedule, SCALED_LINEAR),
], ids=["linear", "scaled_linear"])
def test_alphas_cumprod_agree(schedule_cls, betas):
    """Our float64 ᾱ vs diffusers' own float32 one and vs make_scheduler's re-accumulation (~1e-6 rel.)."""
    ours = schedule_cls().alphas_cumprod
    native = DDPMScheduler(num_train_timesteps=1000, **betas).alphas_cumprod.double()
    rebuilt = make_scheduler("DDPMScheduler", schedule_cls()).alphas_cumprod.double()
    for other in (native, rebuilt):
        assert ((other - ours).abs() / ours).max().item() < 5e-6


# --------------------------------------------------------------------------------------------------
# the adapter: diffusers schedulers driven by our denoiser


def adapter_setup(prediction_type, shape, schedule):
    net = OracleMLP(schedule.alphas_cumprod, prediction_type, shape[1:])
    denoiser = Denoiser(net, schedule, PARAMETERIZATION[prediction_type]())
    return denoiser, *initial_noise(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name, steps, ours_fn, kwargs", [
    ("DDIMScheduler", 50, sample_ddim, {"eta": 0.0}),
    ("DDIMScheduler", 50, sample_ddim, {"eta": 1.0}),
    ("DPMSolverMultistepScheduler", 20, sample_dpmpp_2m, {}),
    ("DPMSolverMultistepScheduler", 10, sample_dpmpp_2m, {}),
], ids=["ddim_eta0", "ddim_eta1", "dpmpp_2m_20", "dpmpp_2m_10"])
def test_adapter_matches_our_sampler(name, steps, ours_fn, kwargs, prediction_type, shape):
    schedule = LinearSchedule()
    denoiser, x_T, g_ref, g_ours = adapter_setup(prediction_type, shape, schedule)
    scheduler = adapter_scheduler(name, schedule, prediction_type)
    via_adapter = sample_diffusers(denoiser, x_T, schedule, steps, generator=g_ref, scheduler=scheduler, **kwargs)
    ours = ours_fn(denoiser, x_T, schedule, our_times(schedule, scheduler), generator=g_ours, **kwargs)
    check_close(ours, via_adapter, f"adapter {name} {kwargs} {steps} {prediction_type} {shape}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("schedule_cls", [LinearSchedule, ScaledLinearSchedule])
def test_adapter_euler_matches_sample_euler(schedule_cls, prediction_type, shape):
    """EulerDiscreteScheduler (default 'linspace' spacing: fractional timesteps, σ interpolated in σ_VE).

    diffusers steps y = x / α (VE coordinates) with y ← y + (y − x̂_0)/σ · (σ' − σ): the same step as
    our ``sample_euler`` at the times whose σ_VE are the scheduler's ``sigmas``. The adapter starts the
    scheduler at y_T = x_T √(σ_max² + 1), the VE image of our VP x_T (not x_T · init_noise_sigma).
    """
    schedule = schedule_cls()
    denoiser, x_T, _, _ = adapter_setup(prediction_type, shape, schedule)
    scheduler = adapter_scheduler("EulerDiscreteScheduler", schedule, prediction_type)
    via_adapter = sample_diffusers(denoiser, x_T, schedule, 30, scheduler=scheduler)

    sigmas = scheduler.sigmas.double()
    assert sigmas[-1] == 0 and float(scheduler.init_noise_sigma) == pytest.approx(sigmas[0].item())
    times = torch.cat([schedule.t_from_log_snr(-2.0 * torch.log(sigmas[:-1])), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(schedule.ve_sigma(times[:-1]), sigmas[:-1], rtol=1e-6)
    ours = sample_euler(denoiser, x_T, schedule, times)
    check_close(ours, via_adapter, f"adapter Euler {schedule_cls.__name__} {prediction_type} {shape}")


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_make_scheduler_turns_clipping_off(name):
    assert make_scheduler(name, LinearSchedule()).config.clip_sample is False
