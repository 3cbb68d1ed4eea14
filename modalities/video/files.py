"""Video files: MP4 written with imageio-ffmpeg (the ffmpeg binary ships in its wheel), read with decord.

Two encodings, both H.264:
  * ``lossless=True``: ``libx264rgb`` at CRF 0, RGB in, RGB out. Decoded frames equal the written ones
    exactly (what the datasets on disk use; 4:2:0 chroma at 32×32 would smear a 10-px shape's colour).
  * ``lossless=False``: ``libx264`` yuv420p, what every player opens (sample directories; the exact frames
    sit beside it in a GIF and in ``samples.npz``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from shared.io.atomic_files import atomic_write_path
from shared.io.data_errors import data_error, describe

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv")


def write_mp4(path, frames: np.ndarray, fps: int = 8, lossless: bool = True) -> Path:
    """``frames`` uint8 [T, H, W, 3] to an H.264 MP4 at ``path`` (atomically: a killed write leaves nothing)."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T>0, H, W, 3], got {list(frames.shape)}")
    if not lossless and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise ValueError(f"yuv420p needs even frame sizes, got {frames.shape[2]}x{frames.shape[1]}")
    codec, pixel_format = ("libx264rgb", "rgb24") if lossless else ("libx264", "yuv420p")

    def encode(temporary: Path) -> None:
        writer = imageio_ffmpeg.write_frames(str(temporary), (frames.shape[2], frames.shape[1]), fps=fps,
                                             codec=codec, pix_fmt_in="rgb24", pix_fmt_out=pixel_format,
                                             output_params=["-crf", "0" if lossless else "18", "-f", "mp4"],
                                             macro_block_size=1, ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()

    atomic_write_path(path, encode)
    return Path(path)


def mp4_bytes(frames: np.ndarray, fps: int = 8, lossless: bool = False) -> bytes:
    """The bytes of ``write_mp4``'s file (for writers that take contents, like the sample-directory writer)."""
    with tempfile.TemporaryDirectory() as folder:
        return write_mp4(Path(folder) / "video.mp4", frames, fps=fps, lossless=lossless).read_bytes()


def _decord():
    """decord, with ffmpeg's own log lines off: a bad file is reported once, by our DataError."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


def read_video(path, indices=None) -> np.ndarray:
    """uint8 [T, H, W, 3] of a video file (``indices``: which frames; None: all). A missing file is a
    ``FileNotFoundError``, anything decord cannot decode a ``DataError`` naming the file."""
    decord = _decord()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    if os.path.getsize(path) == 0:
        raise data_error(path, "empty file, not a video")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        count = len(reader)
        if count == 0:
            raise data_error(path, "holds no frames")
        indices = list(range(count)) if indices is None else [int(i) for i in indices]
        if indices and (min(indices) < 0 or max(indices) >= count):
            raise data_error(path, f"has {count} frames, frames {min(indices)}..{max(indices)} were asked for")
        try:
            frames = reader.get_batch(indices).asnumpy()
        except decord.DECORDError as error:
            if "DECORDArrayCopyFromTo" not in str(error):
                raise
            frames = _read_with_ffmpeg(path)[indices]  # decord 0.6 cannot copy out frames whose width is not a
    except (FileNotFoundError, ValueError):        # multiple of 32: ffmpeg itself decodes those
        raise
    except Exception as error:  # decord raises its own DECORDError and RuntimeError types
        raise data_error(path, f"cannot decode video ({describe(error)})") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise data_error(path, f"decoded to {frames.dtype} {list(frames.shape)}, not RGB frames")
    return frames


def _read_with_ffmpeg(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        width, height = next(reader)["size"]
        return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])
    finally:
        reader.close()


def frame_count(path) -> int:
    """How many frames decord finds in ``path`` (a ``DataError`` naming it if it cannot open it)."""
    decord = _decord()
    try:
        return len(decord.VideoReader(str(path), ctx=decord.cpu(0)))
    except Exception as error:
        raise data_error(path, f"cannot open video ({describe(error)})") from None
