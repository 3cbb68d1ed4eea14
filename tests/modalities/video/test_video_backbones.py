"""Image backbones aligned in time: exactly the image model frame by frame at initialisation (every choice of
temporal layers, both backbones, with and without known frames), spatial weights frozen by default and
bit-identical after training, and temporal layers that really mix frames and read the prompt."""
import copy

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from modalities.blocks import DiTBlock
from modalities.image.backbones import DiTBackbone, UNetBackbone
from modalities.video.backbones import TemporalDiTLayer, VideoDiTBackbone, VideoUNetBackbone, temporal_parameters
from modalities.video.conditions import VideoCondition, with_known_frames
from modalities.video.temporal import PromptAttention
from shared.conditioning.text_encoder import TextCondition

B, T, C, S = 2, 4, 4, 8
LAYERS = [["attention"], ["conv"], ["attention", "conv"]]
BACKBONES = {
    "unet": (lambda: UNetBackbone(C, S, 16, block_out_channels=(32, 64), norm_num_groups=8), VideoUNetBackbone),
    "dit": (lambda: DiTBackbone(C, S, 16, width=64, depth=2, heads=4), VideoDiTBackbone),
}


def text(seed=1):
    g = torch.Generator().manual_seed(seed)
    return TextCondition(torch.randn(B, 3, 16, generator=g), torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool),
                         torch.randn(B, 16, generator=g))


def per_frame(cond: TextCondition) -> TextCondition:
    return TextCondition(*(v.repeat_interleave(T, 0) for v in (cond.tokens, cond.mask, cond.pooled)))


def build(name, **options):
    """(a copy of the image backbone, the video backbone made from it: wrapping adopts the image's layers)"""
    make_image, wrap = BACKBONES[name]
    torch.manual_seed(0)
    image = make_image()
    for parameter in image.parameters():  # as if trained: DiT's zero-initialised layers would output 0 forever
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.02)
    return copy.deepcopy(image), wrap(image, **options)


@pytest.mark.parametrize("prompt_tokens", [False, True], ids=["pooled", "tokens"])
@pytest.mark.parametrize("layers", LAYERS, ids="+".join)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_at_initialisation_the_video_model_is_exactly_the_image_model_frame_by_frame(name, layers, prompt_tokens):
    image, video = build(name, layers=layers, context_frames=True, prompt_tokens=prompt_tokens)
    x, t, cond = torch.randn(B, T, C, S, S), torch.tensor([10.0, 500.0]), text()
    with torch.no_grad():
        frames = image(x.flatten(0, 1), t.repeat_interleave(T), per_frame(cond)).unflatten(0, (B, T))
        assert torch.equal(video(x, t, cond), frames)
        assert torch.equal(video(x, t, with_known_frames(cond, torch.randn_like(x), torch.tensor([1, 2]))), frames)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_spatial_weights_stay_bit_identical_while_temporal_layers_learn_to_mix_frames(name):
    _, video = build(name, context_frames=True)
    trainable = {id(p) for p in temporal_parameters(video)}
    spatial = {n: p.detach().clone() for n, p in video.named_parameters() if id(p) not in trainable}
    assert spatial and all(not p.requires_grad for n, p in video.named_parameters() if n in spatial)
    optimizer = torch.optim.Adam([p for p in video.parameters() if p.requires_grad], lr=1e-2)
    x, t, cond = torch.randn(B, T, C, S, S), torch.tensor([10.0, 500.0]), text()
    for _ in range(3):
        loss = (video(x, t, cond) - x.flip(1)).square().mean()  # a target only other frames can explain
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for n, p in video.named_parameters():
        if n in spatial:
            assert torch.equal(p, spatial[n]), f"{n} moved"
    with torch.no_grad():
        changed = x.clone()
        changed[:, 3] += 1.0  # only the last frame changes ...
        assert (video(changed, t, cond) - video(x, t, cond))[:, 0].abs().max() > 1e-4  # ... and frame 0 follows
        if name == "unet":  # the U-Net's spatial layers read the tokens; the pooled prompt reaches the temporal
            other = TextCondition(cond.tokens, cond.mask, torch.randn_like(cond.pooled))  # attention alone
            assert (video(x, t, other) - video(x, t, cond)).abs().max() > 1e-5


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_prompt_attention_reads_each_real_token_and_ignores_padding(name):
    _, video = build(name, prompt_tokens=True)
    attentions = [m for m in video.modules() if isinstance(m, PromptAttention)]
    assert attentions
    torch.manual_seed(1)
    for attention in attentions:  # as if trained: zero outputs would hide what they read
        torch.nn.init.normal_(attention.attention.out_proj.weight, std=0.1)
    x, t, cond = torch.randn(B, T, C, S, S), torch.tensor([10.0, 500.0]), text()
    padded, word = cond.tokens.clone(), cond.tokens.clone()
    padded[0, 2] += 5.0  # video 0's third token is padding (mask False)
    word[0, 1] += 5.0    # its second is a real word; the pooled embedding stays the same in both
    with torch.no_grad():
        out = video(x, t, cond)
        assert torch.equal(video(x, t, TextCondition(padded, cond.mask, cond.pooled)), out)
        moved = video(x, t, TextCondition(word, cond.mask, cond.pooled)) - out
        for attention in attentions:  # what the word moves without the prompt attention (the U-Net's own
            torch.nn.init.zeros_(attention.attention.out_proj.weight)  # cross-attention reads it too)
        unread = video(x, t, TextCondition(word, cond.mask, cond.pooled)) - video(x, t, cond)
        assert (moved - unread)[0].abs().max() > 1e-4


def test_rotary_frame_positions_start_as_the_image_model_and_see_only_relative_offsets():
    image, video = build("dit", frame_positions="rotary", context_frames=True)
    x, t, cond = torch.randn(B, T, C, S, S), torch.tensor([10.0, 500.0]), text()
    with torch.no_grad():
        frames = image(x.flatten(0, 1), t.repeat_interleave(T), per_frame(cond)).unflatten(0, (B, T))
        assert torch.equal(video(x, t, cond), frames)
    block = DiTBlock(32, 4)
    torch.nn.init.normal_(block.modulation[-1].weight, std=0.1)
    tokens, c = torch.randn(3, 6, 32), torch.randn(3, 32)
    with torch.no_grad():  # RoPE: frames 0..5 or 7..12, the same offsets between them, the same output
        first, later = (block(tokens, c, rotary=get_1d_rotary_pos_embed(8, np.arange(s, s + 6), use_real=True))
                        for s in (0, 7))
        assert torch.allclose(first, later, atol=1e-5)
        assert (block(tokens, c, rotary=get_1d_rotary_pos_embed(8, np.arange(0, 12, 2), use_real=True))
                - first).abs().max() > 1e-3  # other offsets, another output
    with pytest.raises(ValueError, match="rotary"):
        build("unet", frame_positions="rotary")


@pytest.mark.parametrize("frame_positions", ["sinusoidal", "rotary"])
def test_space_time_attention_starts_as_the_image_model_and_reaches_other_patches_of_other_frames(frame_positions):
    image, video = build("dit", span="video", frame_positions=frame_positions, context_frames=True)
    x, t, cond = torch.randn(B, T, C, S, S), torch.tensor([10.0, 500.0]), text()
    with torch.no_grad():
        frames = image(x.flatten(0, 1), t.repeat_interleave(T), per_frame(cond)).unflatten(0, (B, T))
        assert torch.equal(video(x, t, cond), frames)
    torch.manual_seed(0)
    reach = {}
    for span in ("frames", "video"):  # one layer: frame 3's patch 5 changes; does frame 0's patch 2 see it?
        layer = TemporalDiTLayer(32, 4, ["attention"], frame_positions=frame_positions, span=span)
        torch.nn.init.normal_(layer.attention.modulation[-1].weight, std=0.1)
        tokens, c = torch.randn(2 * T, 9, 32), torch.randn(2 * T, 32)
        changed = tokens.clone()
        changed[3, 5] += torch.randn(32)  # not a constant: the block's LayerNorm would remove it
        with torch.no_grad():
            moved = layer(changed, c, T, 3) - layer(tokens, c, T, 3)
        assert moved[T:].abs().max() == 0  # the other video is untouched
        assert moved[0, 5].abs().max() > 1e-4  # the same patch of another frame: both spans
        reach[span] = moved[0, 2].abs().max()
    assert reach["frames"] == 0 and reach["video"] > 1e-4
    with pytest.raises(ValueError, match="span"):
        build("unet", span="video")


def test_frame_prompt_embedding_starts_at_zero_then_depends_on_frame_and_prompt_jointly():
    image, video = build("dit", frame_embedding=True, context_frames=True)
    x, t, cond = torch.randn(B, T, C, S, S), torch.tensor([10.0, 500.0]), text()
    with torch.no_grad():
        frames = image(x.flatten(0, 1), t.repeat_interleave(T), per_frame(cond)).unflatten(0, (B, T))
        assert torch.equal(video(x, t, cond), frames)
    assert any(p is q for p in temporal_parameters(video) for q in video.frame_embedding.parameters())
    embedding = video.frame_embedding
    torch.nn.init.normal_(embedding.mlp[-1].weight, std=0.1)
    pooled = torch.randn(2, 16)
    with torch.no_grad():
        vectors = embedding(pooled, T).reshape(2, T, -1)  # [prompt, frame, width]
    assert (vectors[:, 1:] - vectors[:, :1]).abs().amax() > 1e-3  # frames differ ...
    assert (vectors[1] - vectors[0]).abs().amax() > 1e-3          # ... prompts differ ...
    interaction = vectors[1, 1:] - vectors[1, :1] - (vectors[0, 1:] - vectors[0, :1])
    assert interaction.abs().amax() > 1e-4  # ... and not additively: the frame's effect depends on the prompt
    with pytest.raises(ValueError, match="frame_embedding"):
        build("unet", frame_embedding=True)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_whitened_prompt_is_saved_with_the_model_and_keeps_identity_at_init(name):
    image, video = build(name, text_whitening=True)
    pooled = torch.randn(7, 16, generator=torch.Generator().manual_seed(2))
    video.text_whitening.fit(pooled)
    x, t, cond = torch.randn(B, T, C, S, S), torch.tensor([10.0, 500.0]), text()
    with torch.no_grad():
        frames = image(x.flatten(0, 1), t.repeat_interleave(T), per_frame(cond)).unflatten(0, (B, T))
        assert torch.equal(video(x, t, cond), frames)
    state = video.state_dict()
    assert torch.allclose(state["text_whitening.mean"], pooled.mean(0), atol=1e-6)
    assert not torch.equal(state["text_whitening.matrix"], torch.eye(16))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_train_spatial_unfreezes_everything(name):
    _, video = build(name, train_spatial=True)
    assert all(p.requires_grad for p in video.parameters())


def test_dropping_the_condition_forgets_the_known_frames_with_the_prompt():
    cond = with_known_frames(text(), torch.ones(B, T, C, S, S), torch.tensor([2, 1]))
    null = TextCondition(torch.zeros(1, 3, 16), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 16))
    dropped = cond.where(torch.tensor([True, False]), null)
    assert dropped.known.tolist() == [[False] * T, [True, False, False, False]]
    assert dropped.frames[0].abs().sum() == 0 and torch.equal(dropped.frames[1], cond.frames[1])
    assert torch.equal(dropped.pooled[0], null.pooled[0]) and torch.equal(dropped.pooled[1], cond.pooled[1])
    assert isinstance(dropped, VideoCondition)
