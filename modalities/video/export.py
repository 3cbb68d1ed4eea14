"""The video sample directory (the core's one writer, ``shared.io.sample_dir``):

    000000.mp4 ...   H.264 yuv420p, what every player opens
    000000.gif ...   the same frames as a looping GIF (exact for frames of at most 256 colours, as moving_shapes')
    samples.npz      ``videos`` uint8 [N, T, H, W, 3]: the frames exactly
    samples.jsonl    ``file`` (the MP4), ``prompt``, ``seed``
    grid.gif         the first videos side by side, frame by frame
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modalities.image.export import make_grid
from modalities.video.files import mp4_bytes
from shared.io.animation import chain_preview, gif_bytes
from shared.io.data_errors import data_error
from shared.io.sample_dir import read_arrays, read_index, sample_file_names, write_sample_dir

GRID_FILE = "grid.gif"
FRAME_MS = 125   # 8 frames per second, the rate the MP4s are written at


def to_uint8_videos(videos) -> np.ndarray:
    """uint8 or float [-1, 1] videos [N, T, 3, H, W] or [N, T, H, W, 3] -> uint8 [N, T, H, W, 3]."""
    array = videos.detach().cpu().numpy() if isinstance(videos, torch.Tensor) else np.asarray(videos)
    if array.ndim != 5 or 3 not in (array.shape[2], array.shape[-1]):
        raise ValueError(f"expected videos [N, T, 3, H, W] or [N, T, H, W, 3], got shape {list(array.shape)}")
    if array.shape[-1] != 3:
        array = array.transpose(0, 1, 3, 4, 2)
    if array.dtype != np.uint8:
        array = np.clip(np.round((array.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def export_videos(out_dir, videos, prompts=None, seeds=None, grid_max: int = 16, chain=None) -> Path:
    """Write the sample directory of ``videos``; ``prompts``/``seeds`` one per video; ``chain``: frames of
    sample 0's denoising trajectory (``chain.gif``)."""
    frames = to_uint8_videos(videos)
    n = len(frames)
    for name, values in (("prompts", prompts), ("seeds", seeds)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} videos")
    names = sample_file_names(n, ".mp4")
    files = [(name, mp4_bytes(video)) for name, video in zip(names, frames)]
    records = [{**({"prompt": prompts[i]} if prompts is not None else {}),
                **({"seed": int(seeds[i])} if seeds is not None else {})} for i in range(n)]
    gifs = {Path(name).with_suffix(".gif").name: gif_bytes(video, FRAME_MS, FRAME_MS) for name, video in zip(names, frames)}
    previews = {name: (lambda f, data=data: f.write(data)) for name, data in gifs.items()}
    if n:
        shown = frames[:grid_max]
        grid = gif_bytes([make_grid(shown[:, t], per_row=8) for t in range(shown.shape[1])], FRAME_MS, FRAME_MS)
        previews[GRID_FILE] = lambda f: f.write(grid)
    return write_sample_dir(out_dir, files, records, {"videos": frames}, {**previews, **chain_preview(chain)})


def load_video_samples(out_dir) -> dict:
    """``videos`` uint8 [N, T, H, W, 3], ``prompts`` (None without), ``records`` of a video sample directory."""
    out_dir = Path(out_dir)
    records = read_index(out_dir)
    videos = read_arrays(out_dir, required=("videos",))["videos"]
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise data_error(out_dir / "samples.npz", f"'videos' is {videos.dtype} {list(videos.shape)}, "
                                                  f"not uint8 [N, T, H, W, 3]")
    if len(videos) != len(records):
        raise data_error(out_dir, f"{len(records)} index lines but {len(videos)} videos")
    prompts = [r.get("prompt") for r in records]
    return {"videos": videos, "records": records,
            "prompts": prompts if records and all(isinstance(p, str) for p in prompts) else None}
