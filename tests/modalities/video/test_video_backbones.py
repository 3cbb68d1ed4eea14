"""The image U-Net aligned in time: the image model frame by frame at initialisation, spatial weights frozen
by default, and temporal layers that really mix frames once trained."""
from types import SimpleNamespace

import pytest
import torch

from modalities.image.backbones import UNetBackbone
from modalities.video.backbones import VideoUNetBackbone

B, T = 2, 4


def tiny_image_unet():
    torch.manual_seed(0)
    return UNetBackbone(in_channels=4, sample_size=8, cond_dim=16, block_out_channels=(32, 64), norm_num_groups=8)


def condition(mask=True):
    tokens = torch.randn(B, 3, 16, generator=torch.Generator().manual_seed(1))
    return SimpleNamespace(tokens=tokens, mask=torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool) if mask else None)


def per_frame(cond):
    return SimpleNamespace(tokens=cond.tokens.repeat_interleave(T, 0),
                           mask=None if cond.mask is None else cond.mask.repeat_interleave(T, 0))


@pytest.mark.parametrize("mask", [True, False])
def test_at_initialisation_the_video_model_is_the_image_model_frame_by_frame(mask):
    """Equal up to float32 rounding: the time embedding of 2 rows and of 8 rows already differ by 1e-7 in the
    BLAS matmul, so bitwise equality is not a property of any batched implementation."""
    image = tiny_image_unet()
    video = VideoUNetBackbone(image)
    x, t, cond = torch.randn(B, T, 4, 8, 8), torch.tensor([10, 500]), condition(mask)
    with torch.no_grad():
        frames = image(x.reshape(B * T, 4, 8, 8), t.repeat_interleave(T), per_frame(cond)).reshape(B, T, 4, 8, 8)
        torch.testing.assert_close(video(x, t, cond), frames, rtol=0, atol=1e-5)


def test_spatial_weights_stay_frozen_and_temporal_layers_learn_to_mix_frames():
    video = VideoUNetBackbone(tiny_image_unet())
    spatial = {n: p.detach().clone() for n, p in video.unet.named_parameters() if "motion_modules" not in n}
    assert all(not p.requires_grad for n, p in video.unet.named_parameters() if n in spatial)
    optimizer = torch.optim.Adam(video.temporal_parameters(), lr=1e-2)
    x, t, cond = torch.randn(B, T, 4, 8, 8), torch.tensor([10, 500]), condition()
    for _ in range(3):
        loss = (video(x, t, cond) - x.flip(1)).square().mean()  # a target only other frames can explain
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, parameter in video.unet.named_parameters():
        if name in spatial:
            assert torch.equal(parameter, spatial[name]), f"{name} moved"
    with torch.no_grad():
        changed = x.clone()
        changed[:, 3] += 1.0                                   # only the last frame changes ...
        moved = (video(changed, t, cond) - video(x, t, cond))[:, 0].abs().max()
    assert moved > 1e-4                                        # ... and frame 0's output follows it


def test_train_spatial_unfreezes_everything():
    video = VideoUNetBackbone(tiny_image_unet(), train_spatial=True)
    assert all(p.requires_grad for p in video.parameters())
