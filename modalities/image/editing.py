"""Image editing at sampling time: img2img (SDEdit, Meng et al. 2022) with ``init=IMG strength=S`` and
inpainting with ``mask=MASK`` (white: regenerate, black: keep), in the latent space of the run's first
stage. The core's ``sdedit_start`` and ``Inpainting`` wrapper do the work; this module reads the files: a missing one
raises ``FileNotFoundError`` naming it, an unreadable one ``BadImageError`` (a ``DataError``) naming it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from modalities.image.data import read_image
from shared.errors import ConfigError


@dataclass
class EditStart:
    latent: torch.Tensor              # [1, C, h, w]: the init image in the space the denoiser sees
    known: torch.Tensor | None        # [1, 1, h, w]: 1 where the init is kept (inpainting), or None
    strength: float                   # SDEdit's start time; 1: from pure noise


def edit_start(cfg: DictConfig, first_stage, device) -> EditStart | None:
    """The ``init=`` / ``mask=`` / ``strength=`` of a sample command, read and encoded; None without ``init``."""
    init, mask, strength = cfg.get("init"), cfg.get("mask"), cfg.get("strength")
    if init is None:
        if mask is not None or strength is not None:
            raise ConfigError("mask= and strength= edit an image: give the image with init=IMG.png")
        return None
    strength = 1.0 if strength is None else float(strength)
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength={strength}: must lie in (0, 1]")
    if mask is None and strength == 1.0:
        raise ConfigError(f"init={init}: give strength=S below 1 (img2img: how far the image is noised) "
                         "or mask=MASK.png (inpainting); at strength 1 without a mask the image would be unused")
    image = read_image(init, cfg.data.size)[None].to(device)
    latent = first_stage.encode_latent(image) if first_stage is not None else image
    known = None
    if mask is not None:
        keep = (read_image(mask, cfg.data.size, grayscale=True)[None] <= 0).float()
        factor = image.shape[-1] // latent.shape[-1]
        known = -F.max_pool2d(-keep, factor) if factor > 1 else keep  # a latent cell is kept if all its pixels are
        known = known.to(device)
    return EditStart(latent, known, strength)
