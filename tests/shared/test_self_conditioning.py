"""Self-conditioning (Chen et al. 2023): the two-pass training estimate, the denoiser contract and the
sampling feedback that hands each step the estimate of the step before, per guidance branch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.diffusion.denoiser import Denoiser
from shared.diffusion.guidance import ClassifierFreeGuidance
from shared.diffusion.losses import DenoisingScoreMatching
from shared.diffusion.samplers import sample_ddpm
from shared.diffusion.schedules import CosineSchedule
from shared.diffusion.self_conditioning import EstimateFeedback, training_estimate, with_estimate_feedback


class RecordingBackbone(nn.Module):
    """ε̂ = w·x + v·x̃_0 (+ u without an estimate, + a per-condition offset); records every estimate."""

    self_conditioning = True

    def __init__(self):
        super().__init__()
        self.w, self.v, self.u = (nn.Parameter(torch.tensor(value)) for value in (0.5, 0.25, 0.1))
        self.seen: list[torch.Tensor | None] = []

    def forward(self, x_in, time, cond=None, self_condition=None):
        self.seen.append(self_condition)
        offset = 0.0 if cond is None else cond
        if self_condition is None:
            return self.w * x_in + self.u + offset
        return self.w * x_in + self.v * self_condition + offset


class PlainBackbone(nn.Module):
    def forward(self, x_in, time, cond=None):
        return 0.5 * x_in


def test_training_estimate_is_a_detached_first_pass_on_a_fraction_of_batches():
    denoiser = Denoiser(RecordingBackbone(), CosineSchedule())
    x_t, t = torch.randn(4, 3), torch.full((4,), 0.5, dtype=torch.float64)
    estimate = training_estimate(denoiser, x_t, t, None, rate=1.0)
    assert not estimate.requires_grad and denoiser.backbone.seen == [None]
    assert torch.allclose(estimate, denoiser(x_t, t))
    assert training_estimate(denoiser, x_t, t, None, rate=0.0) is None
    assert training_estimate(Denoiser(PlainBackbone(), CosineSchedule()), x_t, t, None, rate=1.0) is None
    g = torch.Generator().manual_seed(0)
    fed = sum(training_estimate(denoiser, x_t, t, None, 0.3, g) is not None for _ in range(2000))
    assert abs(fed / 2000 - 0.3) < 0.04


def test_loss_scores_the_second_pass_and_gradients_skip_the_first():
    backbone = RecordingBackbone()
    denoiser = Denoiser(backbone, CosineSchedule())
    loss = DenoisingScoreMatching(self_conditioning_rate=1.0)
    x0 = torch.randn(8, 3)
    loss(denoiser, x0, generator=torch.Generator().manual_seed(0)).mean().backward()
    first, second = backbone.seen
    assert first is None and second is not None and not second.requires_grad
    assert backbone.u.grad is None and backbone.v.grad != 0     # only the self-conditioned pass is scored
    backbone.seen.clear()
    DenoisingScoreMatching(self_conditioning_rate=0.0)(denoiser, x0)
    assert backbone.seen == [None]


def test_denoiser_refuses_an_estimate_for_a_backbone_without_self_conditioning():
    denoiser = Denoiser(PlainBackbone(), CosineSchedule())
    assert not denoiser.self_conditioned and with_estimate_feedback(denoiser) is denoiser
    with pytest.raises(ValueError, match="not self-conditioned"):
        denoiser(torch.randn(2, 3), torch.full((2,), 0.5), None, self_condition=torch.randn(2, 3))


def test_sampling_feeds_each_step_the_previous_estimate():
    backbone = RecordingBackbone()
    denoiser = Denoiser(backbone, CosineSchedule())
    estimates = []
    feedback = with_estimate_feedback(denoiser)
    assert isinstance(feedback, EstimateFeedback)
    sample_ddpm(feedback, torch.randn(4, 3), denoiser.schedule, steps=5, generator=torch.Generator().manual_seed(0),
                callback=lambda info: estimates.append(info["denoised"]))
    assert backbone.seen[0] is None and len(backbone.seen) == 5
    for fed, previous in zip(backbone.seen[1:], estimates[:-1]):
        assert torch.equal(fed, previous)


def test_guidance_branches_each_get_their_own_previous_estimate():
    """Under classifier-free guidance the conditional call gets the conditional estimate of the step
    before and the unconditional call the unconditional one, not the guided mixture."""
    backbone = RecordingBackbone()
    denoiser = Denoiser(backbone, CosineSchedule())
    feedback = EstimateFeedback(denoiser)
    outputs = []
    recording = lambda x_t, t, cond=None: outputs.append(feedback(x_t, t, cond)) or outputs[-1]  # noqa: E731
    guided = ClassifierFreeGuidance(recording, scale=3.0, uncond=torch.tensor(-1.0))
    sample_ddpm(guided, torch.randn(4, 3), denoiser.schedule, steps=3, cond=torch.tensor(1.0),
                generator=torch.Generator().manual_seed(0))
    assert backbone.seen[:2] == [None, None] and len(backbone.seen) == 6
    for k in range(2, 6):
        assert torch.equal(backbone.seen[k], outputs[k - 2])     # same branch, one step earlier
