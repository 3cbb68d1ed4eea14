"""Animated previews: frames (H×W×3 uint8 arrays) as GIF bytes, e.g. a denoising chain's ``chain.gif``."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

CHAIN_FILE = "chain.gif"


def gif_bytes(frames, frame_ms: int = 80, last_frame_ms: int = 1500) -> bytes:
    """A looping GIF of ``frames``; the last frame (the finished sample) is held ``last_frame_ms``."""
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    if not images:
        raise ValueError("a GIF needs at least one frame")
    durations = [frame_ms] * (len(images) - 1) + [last_frame_ms]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buffer.getvalue()


def chain_preview(frames) -> dict:
    """``{"chain.gif": write}`` for a sample directory's previews, or nothing without frames."""
    if frames is None:
        return {}
    data = gif_bytes(frames)
    return {CHAIN_FILE: lambda f: f.write(data)}
