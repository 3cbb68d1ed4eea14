"""Fault points for the fault suite (tests/shared/training/test_faults.py): ``MLDM_FAULT=<point>:<n>`` makes
this process kill itself with SIGKILL, like ``kill -9`` from outside, the n-th time it passes ``<point>``.
Unset (always, outside that suite) a fault point costs one environment lookup.

Points: ``step`` (inside an optimizer step: after the backward pass, before the update), ``checkpoint``
(inside a checkpoint write: the weights' temporary file written, not yet renamed), ``checkpoint_json``
(weights renamed into place, their JSON not yet written), ``stage_end`` (a stage finished, the next not begun).
"""
from __future__ import annotations

import os
import signal

_passed: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("MLDM_FAULT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
