"""One sampling path: sample i is a function of (seed, i) alone, whatever the batch size, for every
stochastic sampler and for plain tensors as for variable-size molecules (closed-form denoiser, so exact)."""
import functools

import pytest
import torch

from oracles import GaussianOracle
from shared.diffusion.diffusers_adapter import sample_diffusers
from shared.diffusion.draws import draw_randn
from shared.diffusion.sampler_compositions import at_low_temperature, sample_repaint
from shared.diffusion.samplers import sample_ddim, sample_ddpm, sample_euler, sample_heun
from shared.diffusion.schedules import CosineSchedule, LinearSchedule
from shared.diffusion.spaces import ZeroCoMSpace
from shared.generation.generate import generate, item_generators, merge_batches

STOCHASTIC = {
    "ddpm": sample_ddpm,
    "ddim_eta1": functools.partial(sample_ddim, eta=1.0),
    "euler_churn": functools.partial(sample_euler, churn=10.0),
    "heun_churn": functools.partial(sample_heun, churn=10.0),
    "repaint": functools.partial(sample_repaint, resample=2),
    "low_temperature": at_low_temperature(sample_ddpm, 0.6),
    "diffusers_ddpm": functools.partial(sample_diffusers, scheduler_name="DDPMScheduler"),
}


def tensors(sampler, schedule):
    def draw(indices, generators):
        x_T = draw_randn((len(indices), 2, 3), generators)
        return {"x": sampler(GaussianOracle(schedule, 0.5, 0.8), x_T, schedule, 10, generator=generators),
                "index": list(indices)}
    return draw


def molecules(sampler, schedule):
    """Each item's size is drawn from its own generator first, then its zero-CoM latent."""
    def draw(indices, generators):
        sizes = generators.each(lambda g: torch.randint(2, 7, (1,), generator=g))
        space = ZeroCoMSpace(batch=torch.repeat_interleave(torch.arange(len(sizes)), sizes), num_items=len(sizes))
        x_T = space.randn_like(torch.zeros(int(sizes.sum()), 5), generators)
        oracle = GaussianOracle(schedule, torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5]), 0.8, space=space)
        return {"x": sampler(oracle, x_T, schedule, 10, space=space, generator=generators), "sizes": sizes}
    return draw


# the diffusers adapter samples plain tensors only (diffusers' noise knows no space)
CASES = [(name, data) for name in sorted(STOCHASTIC) for data in (tensors, molecules)
         if not (name.startswith("diffusers") and data is molecules)]


@pytest.mark.parametrize("name,data", CASES, ids=[f"{n}-{d.__name__}" for n, d in CASES])
def test_sample_i_is_a_function_of_seed_and_i_alone(name, data):
    draw = data(STOCHASTIC[name], LinearSchedule() if name.startswith("diffusers") else CosineSchedule())
    whole = generate(draw, 5, seed=3, batch_size=5)
    for batch_size in (2, 1):
        torch.testing.assert_close(generate(draw, 5, seed=3, batch_size=batch_size)["x"], whole["x"],
                                   rtol=1e-5, atol=1e-5)
    prefix = generate(draw, 3, seed=3, batch_size=3)  # the first three of five are the first three
    rows = int(whole["sizes"][:3].sum()) if "sizes" in whole else 3
    torch.testing.assert_close(prefix["x"], whole["x"][:rows], rtol=1e-5, atol=1e-5)
    other_seed = generate(draw, 5, seed=4, batch_size=5)["x"]
    assert other_seed.shape != whole["x"].shape or not torch.allclose(other_seed, whole["x"])


def test_item_generators_split_draws_by_rows_and_name_a_mismatch():
    generators = item_generators(0, [0, 1])
    rows = draw_randn((5, 2), generators, rows_per_item=torch.tensor([2, 3]))
    alone = draw_randn((3, 2), item_generators(0, [1]), rows_per_item=[3])
    assert torch.equal(rows[2:], alone)
    with pytest.raises(ValueError, match=r"shape \[4, 2\] does not split into the rows of 2 items"):
        draw_randn((4, 2), item_generators(0, [0, 1]), rows_per_item=[2, 3])


def test_merge_batches_joins_items_and_keeps_what_one_batch_has():
    parts = [{"x": torch.zeros(2), "names": ["a", "b"], "seed": 1, "chain": torch.ones(3)},
             {"x": torch.ones(1), "names": ["c"], "seed": 1, "chain": None}]
    merged = merge_batches(parts)
    assert merged["x"].tolist() == [0, 0, 1] and merged["names"] == ["a", "b", "c"]
    assert merged["seed"] == 1 and merged["chain"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="cannot merge 'seed'"):
        merge_batches([{"seed": 1}, {"seed": 2}])
