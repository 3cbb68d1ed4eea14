"""Guidance wrappers: exact identities and the closed forms they implement."""
import pytest
import torch

from oracles import GaussianOracle
from shared.diffusion.adaptive import sample_rk45
from shared.diffusion.guidance import (ClassifierFreeGuidance, ClassifierGuidance, DynamicThresholding, Inpainting,
                             ReconstructionGuidance, StaticThresholding, sdedit_start)
from shared.diffusion.sampler_compositions import sample_repaint
from shared.diffusion.samplers import sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler, sample_heun
from shared.diffusion.schedules import CosineSchedule, LinearSchedule, PolynomialSchedule


class LabelDenoiser:
    """A conditional denoiser whose answer depends on a label tensor (None = unconditional)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x_t, t, cond=None):
        shift = 0.0 if cond is None else cond.view(-1, *([1] * (x_t.ndim - 1)))
        return 0.5 * x_t + shift + 0.1 * t.view(-1, *([1] * (x_t.ndim - 1))).float()


def _inputs(shape=(4, 3, 5)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g), torch.full((shape[0],), 0.4, dtype=torch.float64)


def test_cfg_scale_one_is_the_conditional_denoiser_and_scale_w_is_the_formula():
    schedule = CosineSchedule()
    denoiser, (x, t) = LabelDenoiser(schedule), _inputs()
    cond = torch.tensor([1.0, -1.0, 2.0, 0.5])
    assert torch.equal(ClassifierFreeGuidance(denoiser, 1.0, uncond=None)(x, t, cond), denoiser(x, t, cond))
    guided = ClassifierFreeGuidance(denoiser, 3.0, uncond=None)(x, t, cond)
    torch.testing.assert_close(guided, denoiser(x, t) + 3.0 * (denoiser(x, t, cond) - denoiser(x, t)))


def test_cfg_rescale_matches_the_conditional_std_at_phi_one():
    schedule = CosineSchedule()
    denoiser, (x, t) = LabelDenoiser(schedule), _inputs()
    cond = torch.tensor([1.0, -1.0, 2.0, 0.5])
    plain = ClassifierFreeGuidance(denoiser, 7.0, uncond=None)(x, t, cond)
    full = ClassifierFreeGuidance(denoiser, 7.0, uncond=None, rescale=1.0)(x, t, cond)
    torch.testing.assert_close(full.flatten(1).std(1), denoiser(x, t, cond).flatten(1).std(1))
    half = ClassifierFreeGuidance(denoiser, 7.0, uncond=None, rescale=0.5)(x, t, cond)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)


def test_static_and_dynamic_thresholding():
    schedule = CosineSchedule()
    x, t = _inputs()
    big = lambda x_t, t, cond=None: 3.0 * x_t  # noqa: E731
    big.schedule = schedule
    static = StaticThresholding(big, 1.0)(x, t)
    assert static.abs().max() <= 1.0 and torch.equal(static, (3 * x).clamp(-1, 1))
    dynamic = DynamicThresholding(big, percentile=0.9)(x, t)
    s = torch.quantile((3 * x).abs().flatten(1), 0.9, dim=1).clamp(min=1).view(-1, 1, 1)
    torch.testing.assert_close(dynamic, (3 * x).clamp(-s, s) / s)
    assert dynamic.abs().max() <= 1.0 + 1e-6
    small = lambda x_t, t, cond=None: 0.1 * x_t  # noqa: E731
    assert torch.equal(DynamicThresholding(small)(x, t), 0.1 * x), "s = max(1, q) leaves in-range values alone"


def _molecules_two_layouts():
    """Three molecules of 3, 2 and 4 atoms with 5 channels, as sparse rows and as a padded batch."""
    from shared.diffusion.spaces import ZeroCoMSpace

    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    rows = torch.randn(9, 5, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 2, 3, 4, 5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    padded = torch.zeros(3, 4, 5)
    padded[mask] = rows
    return (ZeroCoMSpace(batch=batch), rows), (ZeroCoMSpace(mask=mask), padded), mask


def test_cfg_rescale_and_dynamic_thresholding_take_their_statistics_per_molecule():
    """Sparse rows and the padded batch of the same molecules give the same answer: the statistics are per
    molecule (not per atom row), and padding counts for nothing."""
    (sparse, rows), (padded_space, padded), mask = _molecules_two_layouts()
    t = torch.full((9,), 0.4, dtype=torch.float64)

    def scaled(factor):
        def denoiser(x_t, t, cond=None):
            return x_t * (factor if cond is None else factor * 2)
        return denoiser

    for make in (lambda d, space: ClassifierFreeGuidance(d, 4.0, uncond=None, rescale=1.0, space=space),
                 lambda d, space: DynamicThresholding(d, percentile=0.8, space=space)):
        out_rows = make(scaled(3.0), sparse)(rows, t, torch.ones(1))
        out_padded = make(scaled(3.0), padded_space)(padded, t[:3], torch.ones(1))
        torch.testing.assert_close(out_padded[mask], out_rows)
    rescaled = ClassifierFreeGuidance(scaled(3.0), 4.0, uncond=None, rescale=1.0, space=sparse)(rows, t, torch.ones(1))
    for item in range(3):  # φ = 1: each molecule's std is the conditional prediction's
        atoms = sparse.batch == item
        torch.testing.assert_close(rescaled[atoms].std(), (6.0 * rows[atoms]).std())


def test_classifier_guidance_shifts_x0_by_sigma_squared_over_alpha_times_the_gradient():
    schedule = CosineSchedule()
    denoiser, (x, t) = GaussianOracle(schedule, 0.0, 1.0), _inputs()
    target = torch.full_like(x, 2.0)
    log_prob = lambda x_t, t, cond: -0.5 * ((x_t - target) ** 2).flatten(1).sum(1)  # noqa: E731
    guided = ClassifierGuidance(denoiser, log_prob, scale=1.5)(x, t)
    alpha, sigma = (c.float().view(-1, 1, 1) for c in schedule.alpha_sigma(t))
    torch.testing.assert_close(guided, denoiser(x, t) + 1.5 * sigma**2 / alpha * (target - x))


def test_reconstruction_guidance_closed_form_for_a_linear_denoiser():
    """x̂_0 = k x_t (the zero-mean Gaussian oracle) and A = first channel: ∇‖y − A x̂_0‖² = −2k Aᵀ(y − A x̂_0)."""
    schedule = CosineSchedule()
    denoiser, (x, t) = GaussianOracle(schedule, 0.0, 1.0), _inputs()
    y = torch.ones(4, 1, 5)
    A = lambda x0: x0[:, :1]  # noqa: E731
    guided = ReconstructionGuidance(denoiser, A, y, scale=0.8)(x, t)
    alpha, sigma = (c.float().view(-1, 1, 1) for c in schedule.alpha_sigma(t))
    k = alpha / (alpha**2 + sigma**2)
    x0 = denoiser(x, t)
    grad = torch.zeros_like(x)
    grad[:, :1] = -2 * k * (y - x0[:, :1])
    torch.testing.assert_close(guided, x0 - 0.5 * 0.8 * alpha * grad)


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim, sample_euler, sample_heun, sample_dpmpp_2m,
                                     sample_rk45], ids=lambda f: f.__name__)
@pytest.mark.parametrize("schedule", [LinearSchedule(), PolynomialSchedule()], ids=["linear", "polynomial"])
def test_inpainting_keeps_the_known_part_exactly(sampler, schedule):
    g = torch.Generator().manual_seed(1)
    known = torch.randn(6, 2, 8, generator=g)
    mask = torch.zeros(1, 1, 8)
    mask[..., :3] = 1
    wrapped = Inpainting(GaussianOracle(schedule, 0.0, 1.0), known, mask, generator=g)
    x = sampler(wrapped, torch.randn(6, 2, 8, generator=g), schedule, 20, generator=g)
    assert torch.equal(x[..., :3], known[..., :3])
    assert not torch.equal(x[..., 3:], known[..., 3:]), "the unknown part is generated"


class CopyOracle:
    """Data whose two coordinates are equal, ~ N(0, 1): E[x_0 | x_t] = k (x_a + x_b)/2 per coordinate."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x_t, t, cond=None):
        alpha, sigma = (c.float().view(-1, 1) for c in self.schedule.alpha_sigma(t))
        mean = x_t.mean(1, keepdim=True)
        return (2 * alpha / (2 * alpha**2 + sigma**2) * mean).expand_as(x_t)


def copy_known_first_coordinate(sampler, seed: int = 2, count: int = 500):
    """Inpaint the second coordinate of CopyOracle's data from a known first one -> (known, samples)."""
    schedule, g = CosineSchedule(), torch.Generator().manual_seed(seed)
    known = torch.cat([torch.randn(count, 1, generator=g), torch.zeros(count, 1)], 1)
    mask = torch.tensor([[1.0, 0.0]])
    x = sampler(Inpainting(CopyOracle(schedule), known, mask, generator=g), torch.randn(count, 2, generator=g),
                schedule, generator=g)
    return known, x


def test_inpainting_conditions_the_unknown_part_on_the_known_part():
    """The filled-in coordinate follows the known one. Replacement is an approximation of the conditional
    (Lugmayr et al. 2022 resample to harmonise), so the copy is close, not exact."""
    known, x = copy_known_first_coordinate(lambda *a, generator=None: sample_dpmpp_2m(*a, 50))
    assert torch.equal(x[:, 0], known[:, 0])
    correlation = torch.corrcoef(x.T)[0, 1].item()
    assert correlation > 0.9


def test_repaint_resampling_harmonises_the_generated_part_with_the_known_part():
    """Each DDPM step taken r times with a forward jump back in between (RePaint): the generated coordinate
    copies the known one more closely than one pass does, and the oracle is called r times per step."""
    errors, calls = {}, {}
    for resample in (1, 3):
        counter = []

        def sampler(denoiser, x_T, schedule, generator=None, r=resample, counted=counter):
            def counting(x_t, t, cond=None):
                counted.append(1)
                return denoiser(x_t, t, cond)
            return sample_repaint(counting, x_T, schedule, 100, generator=generator, resample=r)

        known, x = copy_known_first_coordinate(sampler)
        assert torch.equal(x[:, 0], known[:, 0])
        errors[resample], calls[resample] = (x[:, 1] - x[:, 0]).abs().mean().item(), len(counter)
    assert calls == {1: 100, 3: 99 * 3 + 1}, "r calls per step; the last step returns x̂_0"
    assert errors[3] < 0.65 * errors[1], errors  # 0.021 against 0.042 (seed 2)


def test_sdedit_strength_zero_returns_the_input_and_strength_sets_the_start():
    schedule = LinearSchedule()
    x0 = torch.randn(3, 4)
    x_t, times = sdedit_start(x0, 0.0, schedule, 50)
    assert torch.equal(x_t, x0)
    assert torch.equal(sample_ddim(GaussianOracle(schedule), x_t, schedule, times), x0)
    x_t, times = sdedit_start(x0, 0.5, schedule, 50, generator=torch.Generator().manual_seed(0))
    assert times[0].item() == pytest.approx(0.5) and times[-1] == 0 and len(times) == 26
    with pytest.raises(ValueError, match="strength"):
        sdedit_start(x0, 1.5, schedule, 50)
