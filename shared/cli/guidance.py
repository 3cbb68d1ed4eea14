"""Guidance as the ``guidance/`` configs name it: classifier-free guidance (``scale``; none when null) and
thresholding of x̂_0 on top (``thresholding``), checked here by key and composed from the core's wrappers."""
from __future__ import annotations

from shared.diffusion.guidance import ClassifierFreeGuidance, DynamicThresholding, StaticThresholding

THRESHOLDINGS = ("none", "static", "dynamic")


def guidance(scale: float | None = None, rescale: float = 0.0, thresholding: str = "none",
             threshold_limit: float = 1.0, threshold_percentile: float = 0.995):
    """A factory ``guide(denoiser, uncond=None, space=None)``: CFG at ``scale`` (Ho & Salimans 2022, with
    rescale φ), then static clipping to ±``threshold_limit`` or Imagen's dynamic thresholding at
    ``threshold_percentile``; statistics are taken per item of ``space`` (a molecule, not an atom row)."""
    if thresholding not in THRESHOLDINGS:
        raise ValueError(f"guidance.thresholding={thresholding!r}: choose one of {', '.join(THRESHOLDINGS)}")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance.rescale must lie in [0, 1], got {rescale}")
    if threshold_limit <= 0:
        raise ValueError(f"guidance.threshold_limit must be > 0, got {threshold_limit}")
    if not 0.0 < threshold_percentile <= 1.0:
        raise ValueError(f"guidance.threshold_percentile must lie in (0, 1], got {threshold_percentile}")

    def guide(denoiser, uncond=None, space=None):
        if scale is not None:
            denoiser = ClassifierFreeGuidance(denoiser, scale, uncond, rescale=rescale, space=space)
        if thresholding == "static":
            denoiser = StaticThresholding(denoiser, threshold_limit)
        elif thresholding == "dynamic":
            denoiser = DynamicThresholding(denoiser, threshold_percentile, threshold_limit, space=space)
        return denoiser

    return guide
