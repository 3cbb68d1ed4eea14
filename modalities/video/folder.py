"""Folders of real videos (``data=video_folder data.root=DIR``): every MP4/WebM/AVI/MOV/MKV under ``root``
(recursive, sorted), cut into non-overlapping clips of ``num_frames`` frames taken every ``frame_stride``
frames, each frame resized (shorter side) and centre-cropped to ``size``. Captions per video from
``captions.jsonl`` or ``<video>.txt`` (``shared.io.captions``). Every file is opened at construction, so a
corrupt, truncated or too-short video is one ``DataError`` naming it before training starts, or with
``skip_bad`` is left out, listed in ``skipped`` and reported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modalities.image.data import resize_center_crop, uint8_to_float
from modalities.video.files import VIDEO_SUFFIXES, frame_count, read_video
from shared.io.captions import folder_captions
from shared.io.data_errors import data_error
from shared.io.media_folder import media_files, readable_files


class VideoFolder(torch.utils.data.Dataset):
    def __init__(self, root, size: int = 32, num_frames: int = 8, frame_stride: int = 1, skip_bad: bool = False):
        self.root, self.size, self.num_frames, self.stride = Path(root), int(size), int(num_frames), int(frame_stride)
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"num_frames={num_frames} and frame_stride={frame_stride} must be >= 1")
        candidates = media_files(self.root, VIDEO_SUFFIXES, "videos")
        span = (self.num_frames - 1) * self.stride + 1  # frames one clip covers

        def clip_starts(path: Path) -> range:
            count = frame_count(path)
            if count < span:
                raise data_error(path, f"{count} frames, fewer than one clip needs ({num_frames} every "
                                       f"{frame_stride}: {span})")
            return range(0, count - span + 1, span)

        kept, self.skipped = readable_files(self.root, candidates, clip_starts, skip_bad, "videos")
        self.files = [path for path, _ in kept]
        self.clips = [(video, start) for video, (_, starts) in enumerate(kept) for start in starts]
        self.video_captions = folder_captions(self.root, self.files, self.files + self.skipped, "videos")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.clips)

    def clip(self, index: int) -> np.ndarray:
        """uint8 [T, size, size, 3] of clip ``index``."""
        video, start = self.clips[index]
        frames = read_video(self.files[video], range(start, start + self.num_frames * self.stride, self.stride))
        return np.stack([np.asarray(resize_center_crop(Image.fromarray(frame), self.size)) for frame in frames])

    def __getitem__(self, index: int) -> dict:
        index = index + len(self) if index < 0 else index
        video = torch.from_numpy(self.clip(index)).permute(0, 3, 1, 2)
        return {"video": uint8_to_float(video), "caption": self.video_captions[self.clips[index][0]],
                "label": -1, "direction": -1, "index": index}
