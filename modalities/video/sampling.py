"""Sampling videos: text-to-video (all frames at once, or factorised: the image model's first frame, then the video
model), image-to-video (a known first frame) and videos longer than the model's window by autoregressive
extension ("Align your latents" §3.2: each new window is conditioned on the last ``context_frames`` generated
frames). Video i is a function of (seed, i) alone, as everywhere in mldm.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from modalities.image.export import chain_frames
from modalities.video.conditions import VideoCondition
from shared.diffusion.draws import draw_randn
from shared.generation.chain import chain_trajectory
from shared.generation.generate import generate, sample_latent


def windows(num_frames: int, window: int, context: int, first_known: int) -> list[tuple[int, int]]:
    """(known, new) frames of each window: the first window knows ``first_known`` frames (0, or 1 with a
    first frame), every later one the last ``context`` frames generated."""
    if num_frames > window and not 0 < context < window:
        raise ValueError(f"num_frames={num_frames} is longer than the model's {window} frames: extending needs "
                         f"context_frames in [1, {window - 1}], got {context}")
    plan, done = [], 0
    while done < num_frames:
        known = first_known if done == 0 else context
        new = min(window - known, num_frames - done) if done else min(window, num_frames) - known
        plan.append((known, new))
        done += new + (known if done == 0 else 0)
    return plan


@torch.no_grad()
def generate_videos(cfg: DictConfig, denoiser, decoder, conditioner, prompts: list[str], *, steps: int, seed: int,
                    device, latent_shape: tuple[int, int], num_frames: int, window: int, context_frames: int = 0,
                    first_frame: torch.Tensor | None = None, batch_size: int | None = None,
                    image_denoiser=None) -> dict:
    """``videos`` [N, num_frames, 3, H, W] in [-1, 1] for ``prompts``, and ``chain`` (GIF frames: video 0's first
    window along its denoising trajectory, its frames side by side) when the config asks for it.
    ``first_frame``: a normalised latent [C, h, w] every video starts from (kept exactly). Without one, an
    ``image_denoiser`` draws each video's first frame from its prompt (Emu Video's factorised text-to-video)."""
    channels, size = latent_shape

    def draw(indices: list[int], generators) -> dict:
        count = len(indices)
        text = conditioner([prompts[i] for i in indices]).to(device)
        uncond = VideoCondition(conditioner.null(count).to(device))
        latents, trajectory = None, chain_trajectory(cfg, indices)
        first = None if first_frame is None else first_frame.to(device).expand(count, channels, size, size)
        if first is None and image_denoiser is not None:
            first = sample_latent(cfg, image_denoiser, draw_randn((count, channels, size, size), generators, device),
                                  generators, steps, cond=text, uncond=conditioner.null(count).to(device))
        for known, new in windows(num_frames, window, context_frames, 0 if first is None else 1):
            length = known + new
            frames = torch.zeros(count, length, channels, size, size, device=device)
            if known:
                frames[:, :known] = first[:, None] if latents is None else latents[:, -known:]
            mask = (torch.arange(length, device=device) < known).expand(count, length)
            cond = VideoCondition(text, frames, mask)
            x_T = draw_randn((count, length, channels, size, size), generators, device)
            z = sample_latent(cfg, denoiser, x_T, generators, steps, cond=cond, uncond=uncond,
                              callback=trajectory if latents is None else None)
            z[:, :known] = frames[:, :known]  # known frames stay exactly what was given
            latents = z if latents is None else torch.cat([latents, z[:, known:]], dim=1)
        chain = None
        if trajectory is not None:
            states = decoder.decode_latent(torch.cat(trajectory.frames()).to(device)).float().clamp(-1, 1).cpu()
            chain = chain_frames(torch.cat(states.unbind(1), dim=-1), scale=2)  # [steps, 3, H, T·W]
        return {"videos": decoder.decode_latent(latents).float().clamp(-1, 1).cpu(), "chain": chain}

    return generate(draw, len(prompts), seed, batch_size)
