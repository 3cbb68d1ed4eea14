"""Core demo: every sampler of ``shared`` on a 2-D Gaussian mixture, with the exact and a learned denoiser.

Part A runs each sampler with the closed-form denoiser E[x_0 | x_t] of the mixture, so any distance
to the data is the sampler's own discretisation error. Part B trains a small MLP with the core's DSM
loss and compares its samples and negative ELBO with the exact denoiser's and the true entropy.

    python benchmarks/core_demo.py [--out outputs/core_demo] [--quick] [--seed 0] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from shared.diffusion.adaptive import sample_rk45
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.elbo import bits_per_dim, negative_elbo
from shared.diffusion.losses import DenoisingScoreMatching, MinSNRWeighting, mean_per_item
from shared.diffusion.parameterization import VPrediction
from shared.diffusion.samplers import sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler, sample_heun
from shared.diffusion.schedules import CosineSchedule, LinearSchedule
from shared.diffusion.spaces import EuclideanSpace

FULL = dict(num_samples=16384, steps=(10, 20, 50), ddpm_steps=1000, train_steps=6000, batch=512,
            elbo_steps=(200, 1000), elbo_items=4096, entropy_samples=200_000, projections=128, floor_draws=5)
QUICK = dict(num_samples=4096, steps=(10, 20), ddpm_steps=200, train_steps=300, batch=256,
             elbo_steps=(50, 200), elbo_items=1024, entropy_samples=20_000, projections=128, floor_draws=5)
SAMPLERS = {"ddim": sample_ddim, "euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


class GaussianMixture:
    """K isotropic Gaussians of std ``std`` with equal weights, means evenly spaced on a circle."""

    def __init__(self, components: int = 8, radius: float = 2.0, std: float = 0.15):
        angles = 2 * math.pi * torch.arange(components, dtype=torch.float64) / components
        self.means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [K, D]
        self.std = std

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.randint(0, len(self.means), (n,), generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (self.means[k] + self.std * noise).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        sq, d = torch.cdist(x.double(), self.means) ** 2, x.shape[1]  # [N, K]
        log_comp = -0.5 * sq / self.std**2 - d * math.log(self.std) - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(log_comp, dim=1) - math.log(len(self.means))

    def on_mode_rate(self, x: torch.Tensor, num_std: float = 3.0) -> float:
        dist = torch.cdist(x.double(), self.means).min(dim=1).values
        return (dist <= num_std * self.std).double().mean().item()


class ExactDenoiser:
    """E[x_0 | x_t] of the mixture under x_t = α x_0 + σ ε: responsibilities × per-component posterior mean.

    Given component k, x_t ~ N(α μ_k, v I) with v = α² s² + σ², and E[x_0 | x_t, k] = μ_k + (α s²/v)(x_t − α μ_k);
    summed with the responsibilities r_k this is (σ²/v) Σ_k r_k μ_k + (α s²/v) x_t.
    """

    def __init__(self, mixture: GaussianMixture, schedule):
        self.mixture, self.schedule = mixture, schedule

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        alpha, sigma = (c[:, None] for c in self.schedule.alpha_sigma(t))  # [N, 1], float64
        mu, s2, x = self.mixture.means, self.mixture.std**2, x_t.double()
        var = alpha**2 * s2 + sigma**2
        # log N(x_t; α μ_k, v I) up to terms equal for every k (equal weights and variances)
        logits = (alpha * (x @ mu.T) - 0.5 * alpha**2 * (mu**2).sum(1)) / var
        resp = torch.softmax(logits, dim=1)
        return ((sigma**2 / var) * (resp @ mu) + (alpha * s2 / var) * x).to(x_t.dtype)


class CountingDenoiser:
    """Forwards to a denoiser and counts function evaluations (NFE)."""

    def __init__(self, denoiser):
        self.denoiser, self.schedule, self.nfe = denoiser, denoiser.schedule, 0

    def __call__(self, x_t, t, cond=None):
        self.nfe += 1
        return self.denoiser(x_t, t, cond)


def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int, generator: torch.Generator) -> float:
    """Sliced Wasserstein-2: RMS over random directions of the 1-D W2 between sorted projections."""
    n = min(len(a), len(b))
    a, b = a[:n].double(), b[:n].double()
    dirs = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    qa, qb = ((x @ dirs).T.contiguous().sort(dim=1).values for x in (a, b))
    return ((qa - qb) ** 2).mean().sqrt().item()


def evaluate(samples, reference, mixture, cfg, seed) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"sw2": sliced_w2(samples, reference, cfg["projections"], gen), "on_mode": mixture.on_mode_rate(samples)}


def run_sampler(name, fn, denoiser, schedule, steps, cfg, seed):
    """Draw cfg['num_samples'] samples; returns (samples, row without metrics)."""
    gen = torch.Generator().manual_seed(seed)
    counted = CountingDenoiser(denoiser)
    x_T = torch.randn(cfg["num_samples"], 2, generator=gen)
    start = time.perf_counter()
    x0 = fn(counted, x_T, schedule, steps, generator=gen)
    return x0, {"sampler": name, "steps": steps, "nfe": counted.nfe, "seconds": time.perf_counter() - start}


def part_a(mixture, reference, cfg, seed) -> tuple[list[dict], dict]:
    """Every sampler with the exact denoiser, for two schedules. Returns rows and a few sample sets."""
    rows, shown = [], {}
    # noise floor: fresh data draws scored exactly like sampler output (SW2 of finite samples is never 0)
    draws = [mixture.sample(cfg["num_samples"], torch.Generator().manual_seed(seed + 1000 + i))
             for i in range(cfg["floor_draws"])]
    scores = [evaluate(x, reference, mixture, cfg, seed + 2) for x in draws]
    rows.append({"part": "A", "schedule": "-", "sampler": f"data vs data ({len(draws)})", "steps": 0, "nfe": 0,
                 "seconds": 0.0, "sw2": sum(r["sw2"] for r in scores) / len(scores),
                 "sw2_max": max(r["sw2"] for r in scores), "on_mode": sum(r["on_mode"] for r in scores) / len(scores)})
    shown["data"] = draws[0]
    for sched_name, schedule in {"cosine": CosineSchedule(), "linear": LinearSchedule()}.items():
        exact = ExactDenoiser(mixture, schedule)
        runs = [("ddpm", sample_ddpm, cfg["ddpm_steps"])]
        runs += [(name, fn, steps) for name, fn in SAMPLERS.items() for steps in cfg["steps"]]
        runs += [("rk45", sample_rk45, "adaptive")]  # its `steps` only fixes the start time (t = 1)
        for name, fn, steps in runs:  # common x_T (same seed) for every run: rows differ by sampler only
            x0, row = run_sampler(name, fn, exact, schedule, 1 if steps == "adaptive" else steps, cfg, seed + 3)
            row.update(part="A", schedule=sched_name, steps=steps, **evaluate(x0, reference, mixture, cfg, seed + 2))
            rows.append(row)
            if sched_name == "cosine" and name != "ddim" and steps in (10, 20, "adaptive", cfg["ddpm_steps"]):
                shown[f"exact {name} {steps}"] = x0  # (DDIM with η = 0 takes exactly the Euler step)
    return rows, shown


class MLPBackbone(nn.Module):
    """3×128 SiLU MLP on [x, sinusoidal features of the model time]."""

    def __init__(self, dim=2, hidden=128, depth=3, time_features=16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), time_features // 2)) / 1000.0)
        layers, width = [], dim + time_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x, time, cond=None):
        angles = time[:, None] * self.freqs[None]
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def init_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default Linear init, drawn from ``generator`` (deterministic without global seeding)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.in_features)
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return module


def train(mixture, cfg, seed) -> tuple[Denoiser, list[dict], float]:
    gen = torch.Generator().manual_seed(seed)
    denoiser = Denoiser(init_(MLPBackbone(), gen), CosineSchedule(), VPrediction())
    loss_fn, space = DenoisingScoreMatching(weighting=MinSNRWeighting(5.0)), EuclideanSpace()
    opt = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["train_steps"], eta_min=1e-4)
    log, running, start = [], 0.0, time.perf_counter()
    every = max(1, cfg["train_steps"] // 10)
    for step in range(1, cfg["train_steps"] + 1):
        x0 = mixture.sample(cfg["batch"], gen)
        loss = mean_per_item(space, loss_fn(denoiser, x0, space=space, generator=gen), x0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_decay.step()
        running += loss.item()
        if step % every == 0:
            log.append({"step": step, "loss": running / every})
            print(f"  train step {step:5d}  loss {running / every:.4f}")
            running = 0.0
    return denoiser.eval(), log, time.perf_counter() - start


def nelbo_bpd(denoiser, data, steps, seed) -> float:
    out = negative_elbo(denoiser, data, num_steps=steps, spacing="uniform_log_snr",
                        generator=torch.Generator().manual_seed(seed))
    return bits_per_dim(out["total"], out["dof"]).mean().item()


def part_b(mixture, reference, cfg, seed) -> tuple[list[dict], dict, dict]:
    denoiser, log, train_seconds = train(mixture, cfg, seed + 7)
    exact = ExactDenoiser(mixture, denoiser.schedule)
    rows = []
    for label, model in (("exact", exact), ("learned", denoiser)):
        x0, row = run_sampler("dpmpp_2m", sample_dpmpp_2m, model, denoiser.schedule, 20, cfg, seed + 11)
        row.update(part="B", schedule="cosine", sampler=f"{label} dpmpp_2m",
                   **evaluate(x0, reference, mixture, cfg, seed + 2))
        rows.append(row)
    shown = {"learned dpmpp_2m 20": x0}
    elbo_data = mixture.sample(cfg["elbo_items"], torch.Generator().manual_seed(seed + 13))
    entropy_data = mixture.sample(cfg["entropy_samples"], torch.Generator().manual_seed(seed + 17))
    with torch.no_grad():
        entropy = (-mixture.log_prob(entropy_data).mean() / (2 * math.log(2))).item()
        nelbo = {f"{label}_nelbo_bpd": {str(steps): nelbo_bpd(model, elbo_data, steps, seed + 19)
                                        for steps in cfg["elbo_steps"]}
                 for label, model in (("exact", exact), ("learned", denoiser))}
    return rows, shown, {"loss_log": log, "train_seconds": train_seconds, "entropy_bpd": entropy, **nelbo}


def format_table(rows) -> str:
    header = f"{'part':4} {'schedule':8} {'sampler':18} {'steps':>8} {'NFE':>5} {'SW2':>8} {'on-mode':>8} {'time s':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['part']:4} {r['schedule']:8} {r['sampler']:18} {str(r['steps']):>8} {r['nfe']:5d} "
                     f"{r['sw2']:8.4f} {r['on_mode']:8.4f} {r['seconds']:7.2f}")
    return "\n".join(lines)


def save_figure(shown, loss_log, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels, cols = list(shown.items()), 4
    rows = math.ceil((len(panels) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows))
    axes = axes.flatten()
    for ax, (title, x) in zip(axes, panels):
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.4)
        ax.set(title=title, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[])
    ax = axes[len(panels)]
    ax.plot([e["step"] for e in loss_log], [e["loss"] for e in loss_log], marker="o")
    ax.set(title="learned: DSM loss (min-SNR-5)", xlabel="step")
    for ax in axes[len(panels) + 1:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/core_demo"))
    parser.add_argument("--quick", action="store_true", help="small run (used by the tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; these tensors are tiny, and on a busy 2-core box two "
                             "threads spin-wait on each other (measured 10-30x slower)")
    args = parser.parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    cfg = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    mixture = GaussianMixture()
    reference = mixture.sample(cfg["num_samples"], torch.Generator().manual_seed(args.seed))
    print("Part A: samplers vs NFE with the exact denoiser")
    rows_a, shown = part_a(mixture, reference, cfg, args.seed)
    print(format_table(rows_a))
    print("\nPart B: learn it (MLP, v-prediction, cosine, DSM + min-SNR-5)")
    rows_b, shown_b, learned = part_b(mixture, reference, cfg, args.seed)
    print(format_table(rows_b))
    print(f"\nnegative ELBO, bits/dim (uniform-log-SNR grid; true entropy {learned['entropy_bpd']:.4f}):")
    for steps in map(str, cfg["elbo_steps"]):
        print(f"  T = {steps:>5}: exact denoiser {learned['exact_nelbo_bpd'][steps]:.4f}"
              f"   learned {learned['learned_nelbo_bpd'][steps]:.4f}")
    save_figure({**shown, **shown_b}, learned["loss_log"], args.out / "samples.png")

    floor = rows_a[0]["sw2"]
    exact_20 = next(r for r in rows_a if r["schedule"] == "cosine" and r["sampler"] == "dpmpp_2m" and r["steps"] == 20)
    elbo_steps = str(cfg["elbo_steps"][0])
    summary = {
        "mode": "quick" if args.quick else "full", "seed": args.seed,
        "sw2_floor": floor, "sw2_floor_max": rows_a[0]["sw2_max"], "sw2_exact_dpmpp_2m_20": exact_20["sw2"],
        "sw2_learned_dpmpp_2m_20": rows_b[1]["sw2"], "on_mode_learned_dpmpp_2m_20": rows_b[1]["on_mode"],
        "entropy_bpd": learned["entropy_bpd"], "elbo_steps": int(elbo_steps),
        "exact_nelbo_bpd": learned["exact_nelbo_bpd"][elbo_steps],
        "learned_nelbo_bpd": learned["learned_nelbo_bpd"][elbo_steps],
        "loss_first": learned["loss_log"][0]["loss"], "loss_last": learned["loss_log"][-1]["loss"],
        "train_seconds": learned["train_seconds"], "seconds": time.perf_counter() - start,
    }
    results = {"summary": summary, "config": cfg, "rows": rows_a + rows_b, **learned}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(summary))
    return results


if __name__ == "__main__":
    main()
