"""The core demo (`make demo`) in its --quick mode: it runs, writes its files, and its numbers mean something."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

DEMO_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "core_demo.py"
# Exact-denoiser DPM-Solver++(2M) at 20 steps vs the data-vs-data SW2 floor: measured 0.66-1.44x over
# seeds 0-9 at 4,096 samples (finite-sample mode-weight noise dominates both); a sampler whose denoiser
# returns x_t scores ~10x.
SW2_FLOOR_FACTOR = 2.0


def load_demo():
    spec = importlib.util.spec_from_file_location("core_demo", DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture(scope="module")
def quick_run(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("core_demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        returned = demo.main(["--quick", "--out", str(out), "--seed", "0"])
    return out, returned, stdout.getvalue()


def test_results_json_and_summary_line(quick_run):
    out, returned, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == json.loads(json.dumps(returned["summary"]))
    assert json.loads(stdout.strip().splitlines()[-1]) == results["summary"]
    samplers = {(r["schedule"], r["sampler"]) for r in results["rows"]}
    for schedule in ("cosine", "linear"):
        for sampler in ("ddpm", "ddim", "euler", "heun", "dpmpp_2m", "rk45"):
            assert (schedule, sampler) in samplers
    rk45 = [r for r in results["rows"] if r["sampler"] == "rk45"]
    assert all(r["nfe"] > 10 for r in rk45)  # adaptive NFE is reported, not a placeholder


def test_exact_dpmpp_2m_is_near_the_data_floor(quick_run):
    rows = quick_run[1]["rows"]
    floor = rows[0]
    assert floor["sampler"].startswith("data vs data") and 0 < floor["sw2"] < 0.2
    row = next(r for r in rows if (r["schedule"], r["sampler"], r["steps"]) == ("cosine", "dpmpp_2m", 20))
    assert row["nfe"] == 20
    assert row["sw2"] < SW2_FLOOR_FACTOR * floor["sw2"]
    assert row["on_mode"] > 0.97


def test_floor_bound_rejects_a_broken_denoiser(demo, quick_run):
    """The same check fails for a sampler driven by a denoiser that returns x_t unchanged."""
    mixture, schedule, cfg = demo.GaussianMixture(), demo.CosineSchedule(), demo.QUICK

    class Identity:
        def __init__(self):
            self.schedule = schedule

        def __call__(self, x_t, t, cond=None):
            return x_t

    reference = mixture.sample(cfg["num_samples"], torch.Generator().manual_seed(0))
    x0, _ = demo.run_sampler("dpmpp_2m", demo.sample_dpmpp_2m, Identity(), schedule, 20, cfg, seed=3)
    scores = demo.evaluate(x0, reference, mixture, cfg, seed=2)
    assert scores["sw2"] > 2 * SW2_FLOOR_FACTOR * quick_run[1]["rows"][0]["sw2"]
    assert scores["on_mode"] < 0.5


def test_training_loss_fell(quick_run):
    log = quick_run[1]["loss_log"]
    assert len(log) >= 2 and log[-1]["loss"] < log[0]["loss"]


def test_likelihoods_are_sane(quick_run):
    results = quick_run[1]
    entropy = results["entropy_bpd"]
    exact = results["exact_nelbo_bpd"]
    # 8 modes of std 0.15 in 2-D: h = log2(8)/2 + log2(2πe·0.15²)/2 ≈ 0.81 bits/dim (modes barely overlap)
    assert entropy == pytest.approx(0.5 * 3 + 0.5 * torch.log2(torch.tensor(2 * torch.pi * torch.e * 0.0225)).item(),
                                    abs=0.02)
    steps = sorted(exact, key=int)
    assert all(exact[s] > entropy - 0.05 for s in steps)  # a bound (up to Monte-Carlo noise)
    assert exact[steps[-1]] < exact[steps[0]]  # tightens as the grid refines


def test_png_written(quick_run):
    png = quick_run[0] / "samples.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exact_denoiser_matches_monte_carlo_posterior_mean(demo):
    mixture, schedule = demo.GaussianMixture(), demo.CosineSchedule()
    exact = demo.ExactDenoiser(mixture, schedule)
    x0 = mixture.sample(400_000, torch.Generator().manual_seed(1)).double()
    queries = torch.tensor([[1.0, 0.5], [-0.3, 0.1], [0.0, -1.8]], dtype=torch.float64)
    for t in (0.2, 0.5, 0.8):
        alpha, sigma = (float(c) for c in schedule.alpha_sigma(torch.tensor(t)))
        logw = -((queries[:, None] - alpha * x0[None]) ** 2).sum(-1) / (2 * sigma**2)
        monte_carlo = torch.softmax(logw, dim=1) @ x0
        got = exact(queries.float(), torch.full((3,), t, dtype=torch.float64)).double()
        torch.testing.assert_close(got, monte_carlo, atol=0.02, rtol=0)


def test_sampling_and_metric_are_deterministic_given_the_seed(demo):
    mixture, schedule, cfg = demo.GaussianMixture(), demo.LinearSchedule(), dict(demo.QUICK, num_samples=512)
    exact = demo.ExactDenoiser(mixture, schedule)
    a, _ = demo.run_sampler("ddpm", demo.sample_ddpm, exact, schedule, 50, cfg, seed=5)
    b, _ = demo.run_sampler("ddpm", demo.sample_ddpm, exact, schedule, 50, cfg, seed=5)
    c, _ = demo.run_sampler("ddpm", demo.sample_ddpm, exact, schedule, 50, cfg, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert demo.evaluate(a, c, mixture, cfg, seed=2) == demo.evaluate(b, c, mixture, cfg, seed=2)
