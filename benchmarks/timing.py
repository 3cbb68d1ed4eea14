"""Timing shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is
on ``sys.path``; the scripts put it there themselves when loaded from elsewhere, e.g. by tests)."""
from __future__ import annotations

import statistics
import time


def time_side_by_side(fns: dict, repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved (a, b, c, a, b, c, ...) so that
    load changes on a shared machine hit every method alike."""
    if warmup:
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
