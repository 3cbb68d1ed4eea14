"""``trainer.precision``: fp32, bf16 (autocast for the networks, fp32 master weights), or auto.

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs
with AVX512-BF16 or AMX tiles. Elsewhere it is emulated: on an AVX2-only CPU a bf16 matmul took 4.8× the
fp32 time (a 1024×256 by 256×256 product, 2 threads), so ``auto`` picks fp32 there. The same holds on a
bf16 CPU whose torch is held to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``), which
is how an AVX2-only machine's behaviour is reproduced on a newer one.
"""
from __future__ import annotations

import torch

from shared.cli.schema import Precision

PRECISIONS = tuple(p.value for p in Precision)  # the config schema's names, the one list of them


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch reports the CPU's instruction sets only through these private helpers
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe is not None and probe() for probe in probes) and kernels_use_bf16_instructions()
    return False


def kernels_use_bf16_instructions() -> bool:
    """Whether torch's CPU kernels may use the bf16 instructions: ATEN_CPU_CAPABILITY (ATen's vector kernels)
    and ONEDNN_MAX_CPU_ISA (oneDNN's matmuls and convolutions) can hold them below AVX-512."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    onednn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return onednn is None or bool(onednn())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 where the device has native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: expected one of {' | '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision
