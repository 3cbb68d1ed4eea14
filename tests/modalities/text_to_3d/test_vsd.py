"""VSD's particle score (ProlificDreamer): a camera-conditioned copy of the prior that starts as the prior
exactly, learns the renders by denoising score matching, tells cameras apart once trained, and leaves the
frozen prior untouched."""
from types import SimpleNamespace

import pytest
import torch

from modalities.image.backbones import DiTBackbone
from modalities.text_to_3d.cameras import orbit_cameras
from modalities.text_to_3d.distill import DistillSettings, guidance_scale
from modalities.text_to_3d.vsd import ParticleScore, camera_features
from shared.conditioning.text_encoder import TextCondition
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.parameterization import VPrediction
from shared.diffusion.schedules import CosineSchedule

DIM = 16


def tiny_prior() -> Denoiser:
    torch.manual_seed(0)
    backbone = DiTBackbone(in_channels=4, sample_size=8, cond_dim=DIM, width=32, depth=1, heads=2)
    for layer in (backbone.final_modulation[-1], backbone.final):   # adaLN-Zero starts at 0: make it a real net
        torch.nn.init.normal_(layer.weight, std=0.05)
    return Denoiser(backbone, CosineSchedule(), VPrediction()).requires_grad_(False)


def text(batch: int) -> TextCondition:
    tokens = torch.randn(1, 3, DIM, generator=torch.Generator().manual_seed(1)).expand(batch, -1, -1)
    return TextCondition(tokens=tokens, mask=torch.ones(batch, 3, dtype=torch.bool), pooled=tokens.mean(1))


def test_camera_features_are_the_pose():
    cameras = orbit_cameras([0.0, 90.0], 20.0, 3.0, 45.0)
    features = camera_features(cameras)
    assert features.shape == (2, 12)
    assert torch.allclose(features.view(2, 3, 4)[..., 3], cameras.eye)
    assert torch.allclose(features.view(2, 3, 4)[..., :3], cameras.rotation)


def test_the_copy_starts_as_the_prior_and_adds_one_camera_token():
    prior = tiny_prior()
    particle = ParticleScore(prior, DIM)
    cameras = orbit_cameras([0.0, 200.0], [10.0, 40.0], 3.0, 45.0)
    cond = particle.condition(text(2), cameras)
    assert cond.tokens.shape == (2, 4, DIM) and cond.mask.all()
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8])
    assert torch.equal(particle(x_t, t, cond), prior(x_t, t, text(2)))
    assert all(p.requires_grad for p in particle.parameters()) and not any(p.requires_grad for p in prior.parameters())
    with pytest.raises(TypeError, match="mldm text condition"):
        particle.condition(torch.zeros(2, DIM), cameras)


def test_the_copy_learns_each_cameras_renders_and_the_prior_stays_frozen():
    """Two cameras, two different 'renders': after training the copy's x̂₀ at the same noisy input depends on
    the camera, each nearer its own render; the DSM loss falls and the prior's weights do not move."""
    prior = tiny_prior()
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    particle = ParticleScore(prior, DIM)
    cameras = orbit_cameras([0.0, 180.0], 20.0, 3.0, 45.0)
    renders = torch.stack([torch.full((4, 8, 8), 0.8), torch.full((4, 8, 8), -0.8)])
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(particle.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = particle.loss(renders, text(2), cameras, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    x_t, t = torch.zeros(2, 4, 8, 8), torch.tensor([0.7, 0.7])   # the same input under both cameras
    with torch.no_grad():
        x0 = particle(x_t, t, particle.condition(text(2), cameras)).mean((1, 2, 3))
    assert float(x0[0]) > 0.2 and float(x0[1]) < -0.2
    assert all(torch.equal(before[k], v) for k, v in prior.state_dict().items())


def test_vsd_guides_as_the_prior_samples_and_sds_as_it_needs():
    """ProlificDreamer: VSD works at the prior's sampling scale, where SDS needs more (DreamFusion)."""
    prior = SimpleNamespace(default_guidance_scale=7.5, sampling_guidance_scale=3.0)
    assert guidance_scale(prior, DistillSettings()) == 7.5
    assert guidance_scale(prior, DistillSettings(distillation="vsd")) == 3.0
    assert guidance_scale(prior, DistillSettings(distillation="vsd", guidance_scale=5.0)) == 5.0
