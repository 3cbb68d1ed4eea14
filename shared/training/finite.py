"""Where a batch holds NaN/inf: when a loss is not finite, the data is checked before the optimiser is blamed."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import torch


def non_finite_fields(batch, name: str = "batch") -> Iterator[str]:
    """Names (``batch['pos']``, ``batch[1]`` ...) of the floating tensors in ``batch`` holding NaN/inf; walks
    mappings, sequences, dataclasses and graph batches (``to_dict``)."""
    if torch.is_tensor(batch):
        if batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
            yield name
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            yield from non_finite_fields(value, f"{name}[{key!r}]")
    elif isinstance(batch, (list, tuple)):
        for index, value in enumerate(batch):
            yield from non_finite_fields(value, f"{name}[{index}]")
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        for field in dataclasses.fields(batch):
            yield from non_finite_fields(getattr(batch, field.name), f"{name}.{field.name}")
    elif callable(getattr(batch, "to_dict", None)):
        yield from non_finite_fields(batch.to_dict(), name)
