"""A real but tiny training task for the engine's tests: DSM on 2-D Gaussian-mixture data with an MLP."""
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.diffusion.denoiser import Denoiser
from shared.diffusion.losses import DenoisingScoreMatching, UniformTime
from shared.diffusion.parameterization import VPrediction
from shared.diffusion.samplers import sample_dpmpp_2m
from shared.diffusion.schedules import CosineSchedule


class FourierMLP(nn.Module):
    def __init__(self, width=64, dropout=0.1):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0, 6, 8)))
        self.net = nn.Sequential(nn.Linear(2 + 16, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, time, cond=None):
        angles = time[:, None] / 1000 * self.frequencies
        return self.net(torch.cat([x, angles.sin(), angles.cos()], 1))


class ToyTask:
    """Stage 'diffusion' of a toy modality; ``nan_at_step``, ``nan_every`` and ``step_delay`` exist for the
    engine tests.

    Dropout draws from the global RNG, which the loop reseeds per (step, rank): exact on resume, but
    rank-dependent, so the DDP-equivalence test turns it off."""

    def __init__(self, cfg=None, run_dir=None, device="cpu", num_examples=2048,
                 nan_at_step=-1, step_delay=0.0, dropout=0.1, nan_every=0):
        self.name = "diffusion"  # the runner names it from the stage declaration
        g = torch.Generator().manual_seed(0)
        angles = 2 * math.pi * torch.randint(0, 4, (num_examples,), generator=g) / 4
        self.data = torch.stack([angles.cos(), angles.sin()], 1) + 0.1 * torch.randn(num_examples, 2, generator=g)
        if nan_every:  # corrupt data, as a NaN in a user's file would be
            self.data[::nan_every, 1] = float("nan")
        torch.manual_seed(0)
        self.denoiser = Denoiser(FourierMLP(dropout=dropout), CosineSchedule(), VPrediction())
        self.loss = DenoisingScoreMatching()
        self.nan_at_step, self.step_delay = nan_at_step, step_delay

    def modules(self):
        return {"denoiser": self.denoiser}

    def param_groups(self):
        return {"main": list(self.denoiser.parameters())}

    def ema_modules(self):
        return ["denoiser"]

    def num_examples(self):
        return len(self.data)

    def batch(self, indices, device):
        return {"x": self.data[indices].to(device)}

    def losses(self, batch, random, step):
        if self.step_delay:
            time.sleep(self.step_delay)
        x0 = batch["x"]
        t = random.draw(UniformTime(), len(x0), self.denoiser.schedule)
        loss = self.loss(self.denoiser, x0, t=t, noise=random.randn_like(x0)).mean()
        if step == self.nan_at_step:
            loss = loss * float("nan")
        return {"main": loss}, {"loss": loss.item()}

    def preview(self, step, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        x = sample_dpmpp_2m(self.denoiser, torch.randn(64, 2, generator=torch.Generator().manual_seed(0)),
                            self.denoiser.schedule, 10)
        np.save(out_dir / "samples.npy", x.numpy())

    def finalize(self):
        pass
