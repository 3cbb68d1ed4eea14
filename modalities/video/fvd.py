"""Fréchet Video Distance (Unterthiner et al. 2018): the Fréchet distance between Gaussians fitted to features
of generated and real videos, from a feature network the user supplies as a local file; nothing is downloaded.

Accepted networks (``load_feature_network``):
  * a TorchScript file, e.g. the I3D detector used for FVD by StyleGAN-V / cd-fvd (``i3d_torchscript.pt``):
    called as ``net(videos, rescale=False, resize=False, return_features=True)`` on float [N, 3, T, H, W] in
    [-1, 1], or as ``net(videos)`` when its forward takes no such arguments;
  * a directory holding a HuggingFace ``VideoMAEModel`` (``save_pretrained``): features are the mean of
    ``last_hidden_state`` over tokens.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
I3D_KWARGS = {"rescale": False, "resize": False, "return_features": True}   # StyleGAN-V's detector_kwargs

Embed = Callable[[torch.Tensor], torch.Tensor]     # float [B, T, H, W, 3] in [0, 1] -> [B, D]


class VideoFeatures:
    """uint8 videos [N, T, H, W, 3] -> float64 features [N, D], in batches under ``torch.no_grad``."""

    def __init__(self, embed: Embed, batch_size: int = 16, device: str | torch.device = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.embed, self.batch_size, self.device = embed, batch_size, torch.device(device)

    def __call__(self, videos_uint8: np.ndarray) -> np.ndarray:
        videos = np.asarray(videos_uint8)
        if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"expected uint8 videos [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
        batches = []
        with torch.no_grad():
            for start in range(0, len(videos), self.batch_size):
                # Only one batch is ever float: a whole evaluation set in float32 is 4x its uint8 size.
                batch = torch.from_numpy(videos[start:start + self.batch_size]).to(self.device).float() / 255
                batches.append(self.embed(batch).reshape(len(batch), -1).double().cpu().numpy())
        return np.concatenate(batches) if batches else np.zeros((0, 0))


def _resize_frames(videos: torch.Tensor, size: int) -> torch.Tensor:
    """[B, T, H, W, 3] -> [B, T, size, size, 3], bilinear per frame."""
    b, t, h, w, c = videos.shape
    if (h, w) == (size, size):
        return videos
    frames = videos.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.permute(0, 2, 3, 1).reshape(b, t, size, size, c)


def _is_signature_error(error: Exception) -> bool:
    """True for 'forward() got/expected ... argument(s)', not for a failure inside the network's graph."""
    message = str(error)
    return "argument" in message and "TorchScript interpreter" not in message


def _torchscript_embed(net: torch.jit.ScriptModule, resize_to: int | None) -> Embed:
    with_kwargs = [True]        # settled by the first batch, so later batches don't pay for a failed call

    def embed(videos: torch.Tensor) -> torch.Tensor:
        videos = _resize_frames(videos, resize_to) if resize_to else videos
        videos = videos.permute(0, 4, 1, 2, 3) * 2 - 1                     # [B, 3, T, H, W] in [-1, 1]
        if with_kwargs[0]:
            try:
                return net(videos, **I3D_KWARGS)
            except (TypeError, RuntimeError) as error:
                if not _is_signature_error(error):
                    raise
                with_kwargs[0] = False
        return net(videos)
    return embed


def _videomae_embed(model: torch.nn.Module) -> Embed:
    size, frames = model.config.image_size, model.config.num_frames

    def embed(videos: torch.Tensor) -> torch.Tensor:
        # VideoMAE's position embeddings fix both the frame count and the frame size.
        index = torch.arange(frames, device=videos.device).clamp(max=videos.shape[1] - 1)
        videos = _resize_frames(videos[:, index], size)
        mean, std = (videos.new_tensor(v) for v in (IMAGENET_MEAN, IMAGENET_STD))
        pixel_values = ((videos - mean) / std).permute(0, 1, 4, 2, 3)      # [B, T, 3, H, W]
        return model(pixel_values=pixel_values).last_hidden_state.mean(1)
    return embed


def _load_videomae(path: Path) -> torch.nn.Module:
    config = path / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type != "videomae":
        raise ConfigError(f"feature network {path}: a directory must hold a HuggingFace VideoMAEModel "
                          f"(config.json with model_type 'videomae'), found model_type {model_type!r}")
    try:
        from transformers import VideoMAEModel
    except ImportError as error:
        raise ConfigError(f"feature network {path}: loading a VideoMAE directory needs transformers") from error
    try:
        return VideoMAEModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"feature network {path}: cannot load VideoMAEModel: {error}") from error


def load_feature_network(path: str | Path, batch_size: int = 16, device: str | torch.device = "cpu",
                         resize_to: int | None = None) -> VideoFeatures:
    """A local TorchScript file or VideoMAE directory as a ``VideoFeatures``. ``resize_to`` (TorchScript only:
    VideoMAE always uses its config's size) resizes frames first, e.g. 224 for I3D, which wants >= ~10 frames."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"feature network {path}: no such file or directory")
    if path.is_dir():
        model = _load_videomae(path).to(device).eval()
        return VideoFeatures(_videomae_embed(model), batch_size, device)
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"feature network {path}: not a TorchScript file (accepted: a TorchScript file, "
                          f"e.g. i3d_torchscript.pt, or a VideoMAEModel directory): {error}") from error
    return VideoFeatures(_torchscript_embed(net.to(device).eval(), resize_to), batch_size, device)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; rounding's tiny negative eigenvalues count as 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) (Heusel et al. 2017), float64.

    Σ1Σ2 is not symmetric, but it is similar to S Σ2 S with S = Σ1^½, which is symmetric PSD: so
    Tr((Σ1Σ2)^½) = Σ √λ_i over eigh's eigenvalues of S Σ2 S, with no complex sqrtm round-off to discard."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / "
                         f"{sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(distance, 0.0))        # >= 0 exactly; below 0 only by rounding


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of ``features`` [N, D], float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"expected features [N, D], got shape {features.shape}")
    if len(features) < 2:
        raise ValueError(f"a covariance needs at least 2 feature rows, got {len(features)}")
    return features.mean(0), np.atleast_2d(np.cov(features, rowvar=False))


def fvd(fake_videos: np.ndarray, real_videos: np.ndarray, network: VideoFeatures) -> float:
    """FVD between uint8 videos [N, T, H, W, 3] (Unterthiner et al. 2018); lower is closer."""
    fake, real = np.asarray(fake_videos), np.asarray(real_videos)
    # Features of clips of different lengths or sizes differ for that reason alone: the score would mislead.
    if fake.ndim != 5 or real.ndim != 5 or fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"fake and real videos must share [T, H, W, 3]: fake {fake.shape}, real {real.shape}")
    return frechet_distance(*feature_statistics(network(fake)), *feature_statistics(network(real)))
