"""GAN losses for first stages: closed forms, the adaptive weight, the delayed start, the patch discriminator."""
import pytest
import torch
from torch import nn

from shared.first_stage.gan import (AdversarialTraining, PatchDiscriminator, adaptive_weight, disc_factor, hinge_d_loss,
                        hinge_g_loss, vanilla_d_loss, vanilla_g_loss)


def test_hinge_and_vanilla_losses_on_hand_values():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 0.5])
    # real: relu(1 - [2, .5, -1]) = [0, .5, 2] -> 2.5/3; fake: relu(1 + [-3, 0, .5]) = [0, 1, 1.5] -> 2.5/3
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 2.5 / 3)))
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor(2.5 / 3))

    def sp(v):
        return torch.log1p(torch.exp(torch.tensor(v)))

    expected = 0.5 * ((sp(-2.0) + sp(-0.5) + sp(1.0)) / 3 + (sp(-3.0) + sp(0.0) + sp(0.5)) / 3)
    torch.testing.assert_close(vanilla_d_loss(real, fake), expected)
    torch.testing.assert_close(vanilla_g_loss(fake), (sp(3.0) + sp(0.0) + sp(-0.5)) / 3)


def test_adaptive_weight_on_a_linear_model_by_hand():
    W = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    x, target, v = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, -1.0])
    y = W @ x                                   # [-3, 6.5]; y − t = [-3, 5.5]
    rec = ((y - target) ** 2).sum()             # ∇_W rec = 2 (y − t) xᵀ: norm 2·√39.25·√5
    g = -(v * y).sum()                          # ∇_W g = −v xᵀ: norm √2·√5
    expected = torch.tensor(2 * 39.25**0.5 * 5**0.5 / (10**0.5 + 1e-4))
    weight = adaptive_weight(rec, g, W)
    torch.testing.assert_close(weight, expected)
    assert not weight.requires_grad
    assert adaptive_weight(rec, g, W, max_weight=1.5).item() == 1.5
    (rec + g).backward()  # graphs were retained for the caller
    assert W.grad is not None


def test_disc_start_gates_the_adversarial_terms():
    assert [disc_factor(s, 10, 0.7) for s in (0, 9, 10, 11)] == [0.0, 0.0, 0.7, 0.7]
    torch.manual_seed(0)
    gen = nn.Conv2d(3, 3, 3, padding=1)
    adv = AdversarialTraining(PatchDiscriminator(3, channels=8, layers=1), disc_start=5)
    x = torch.randn(2, 3, 16, 16)
    rec = gen(x)
    rec_loss = (rec - x).abs().mean()
    before = adv(x, rec, step=4, last_layer=gen.weight, rec_loss=rec_loss)
    assert not adv.active(4) and adv.active(5)
    assert before["generator"].item() == 0.0 and not before["generator"].requires_grad
    assert before["discriminator"].item() == 0.0 and before["disc_factor"].item() == 0.0
    after = adv(x, rec, step=5, last_layer=gen.weight, rec_loss=rec_loss)
    assert after["generator"].requires_grad and after["d_weight"].item() > 0
    torch.testing.assert_close(after["generator"], 0.5 * after["d_weight"] * after["g_loss"])


def test_generator_and_discriminator_terms_do_not_leak_gradient():
    torch.manual_seed(0)
    gen = nn.Conv2d(3, 3, 3, padding=1)
    disc = PatchDiscriminator(3, channels=8, layers=1)
    adv = AdversarialTraining(disc, disc_start=0)
    x = torch.randn(2, 3, 16, 16)
    rec = gen(x)
    out = adv(x, rec, step=0, last_layer=gen.weight, rec_loss=(rec - x).abs().mean())
    out["generator"].backward()
    assert all(p.grad is None for p in disc.parameters()) and gen.weight.grad.abs().sum() > 0
    gen.zero_grad()
    out["discriminator"].backward()
    assert gen.weight.grad is None or gen.weight.grad.abs().sum() == 0
    assert all(p.grad is not None for p in disc.parameters())


def test_without_grad_the_adaptive_weight_is_zero_and_bf16_autocast_runs():
    torch.manual_seed(0)
    gen = nn.Conv2d(3, 3, 3, padding=1)
    adv = AdversarialTraining(PatchDiscriminator(3, channels=8, layers=1), loss="vanilla")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        rec = gen(x)
        out = adv(x, rec, 0, gen.weight, (rec - x).abs().mean())
    assert out["d_weight"].item() == 0.0 and torch.isfinite(out["discriminator"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec = gen(x)
        out = adv(x, rec, 0, gen.weight, (rec.float() - x).abs().mean())
    assert out["generator"].dtype == torch.float32 and torch.isfinite(out["generator"]) and out["d_weight"] > 0
    with pytest.raises(ValueError, match="last_layer"):
        adv(x, gen(x), 0)
    assert AdversarialTraining(adv.discriminator, adaptive=False)(x, gen(x), 0)["d_weight"].item() == 1.0


@pytest.mark.parametrize("dims,size,out", [(1, 64, 6), (2, 32, 2), (3, 32, 2)])
@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_patch_discriminator_output_shapes(dims, size, out, norm):
    disc = PatchDiscriminator(in_channels=2, channels=4, layers=3, dims=dims, norm=norm)
    x = torch.randn(2, 2, *(size,) * dims)
    assert disc(x).shape == (2, 1, *(out,) * dims)  # size/8, then two 4-wide stride-1 convs: −1, −1


def test_patch_discriminator_defaults_and_channel_growth():
    disc = PatchDiscriminator()  # taming's: 64 channels, 3 layers, 70×70 patches
    assert disc.receptive_field == 70
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert PatchDiscriminator(channels=8, layers=5).net[-1].in_channels == 64  # capped at 8×
    with pytest.raises(ValueError):
        PatchDiscriminator(dims=4)


@pytest.mark.parametrize("dims", [1, 2])
def test_each_logit_sees_one_receptive_field_patch(dims):
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=1, channels=4, layers=1, dims=dims, norm="none")
    assert disc.receptive_field == 16
    x = torch.randn(1, 1, *(48,) * dims, requires_grad=True)
    logits = disc(x)
    assert logits[0, 0].numel() > 1  # a map of patch logits, not one score
    centre = tuple(s // 2 for s in logits.shape[2:])
    logits[(0, 0) + centre].backward()
    support = x.grad[0, 0].abs() > 0
    for d in range(dims):  # along every axis the gradient covers exactly one receptive-field window
        seen = support.movedim(d, 0).reshape(support.shape[d], -1).any(1)
        idx = seen.nonzero().flatten()
        assert idx.max() - idx.min() + 1 == 16 and seen.sum() == 16
