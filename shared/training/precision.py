"""``trainer.precision``: fp32, bf16 (autocast for the networks, fp32 master weights), or auto.

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs
with AVX512-BF16 or AMX tiles. Elsewhere it is emulated: on an AVX2-only CPU a bf16 matmul took 4.8× the
fp32 time (a 1024×256 by 256×256 product, 2 threads), so ``auto`` picks fp32 there.
"""
from __future__ import annotations

import torch

from shared.config import Precision

PRECISIONS = tuple(p.value for p in Precision)  # the config schema's names, the one list of them


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch reports the CPU's instruction sets only through these private helpers
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe is not None and probe() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 where the device has native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: expected one of {' | '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision
