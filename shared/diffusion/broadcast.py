"""Broadcasting helpers: per-item coefficients against tensors of any rank."""
from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so ``x`` broadcasts against a rank-``target_ndim`` tensor."""
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target has fewer ({target_ndim})")
    return x[(...,) + (None,) * missing]


def as_time(t: torch.Tensor | float, like: torch.Tensor | None = None) -> torch.Tensor:
    """Continuous time as a float64 tensor (schedules are evaluated in double precision)."""
    device = like.device if like is not None else None
    return torch.as_tensor(t, dtype=torch.float64, device=device)
