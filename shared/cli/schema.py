"""The typed keys of each command (closed schema): types, ranges, and the experiment's ``stages`` node.

Types only here, every default lives in the YAML tree (MISSING), so there is one source of defaults.
A key's range is field metadata (``at_least(1)`` ...), checked after the types, naming the key.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Callable, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ValidationError

from shared.errors import ConfigError


class Source(str, Enum):
    samples = "samples"
    data = "data"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


class FieldKind(str, Enum):
    voxel = "voxel"
    mlp = "mlp"
    sdf = "sdf"


class DensityActivation(str, Enum):
    softplus = "softplus"
    exp = "exp"


class MeshMethod(str, Enum):
    hull = "hull"
    level = "level"
    level_hull = "level_hull"


class Precision(str, Enum):
    bf16 = "bf16"
    fp32 = "fp32"
    auto = "auto"


def _ranged(test: Callable[[float], bool], text: str):
    return field(default=MISSING, metadata={"range": (test, text)})


def at_least(low: int):
    return _ranged(lambda v: v >= low, f">= {low}")


def positive():
    return _ranged(lambda v: v > 0 and math.isfinite(v), "> 0 and finite")


def fraction(closed_top: bool = True):
    return _ranged((lambda v: 0 <= v <= 1) if closed_top else (lambda v: 0 <= v < 1),
                   "in [0, 1]" if closed_top else "in [0, 1)")


def finite():
    return _ranged(math.isfinite, "finite")


@dataclass
class TrainerKeys:
    max_steps: int = at_least(1)
    batch_size: int = at_least(1)
    lr: float = positive()
    warmup_steps: int = at_least(0)
    ema_decay: float = fraction(closed_top=False)
    precision: Precision = MISSING
    grad_clip: Optional[float] = positive()
    grad_accum: int = at_least(1)
    checkpoint_every: int = at_least(0)
    keep_last: int = at_least(0)
    log_every: int = at_least(1)
    sample_every: int = at_least(0)
    sample_steps: int = at_least(1)
    sample_count: int = at_least(1)


@dataclass
class TrainKeys:
    run_dir: Optional[str] = MISSING
    seed: int = at_least(0)
    resume: bool = MISSING
    init_from: Optional[str] = MISSING
    trainer: TrainerKeys = field(default_factory=TrainerKeys)


@dataclass
class GenerateKeys(TrainKeys):
    """What every command that samples from a run takes."""
    num_samples: int = at_least(1)
    steps: int = at_least(1)
    prompt: Optional[str] = MISSING
    guidance_scale: Optional[float] = finite()
    batch_size: int = at_least(1)
    out_dir: Optional[str] = MISSING
    overwrite: bool = MISSING


@dataclass
class ExportKeys:
    chain: bool = MISSING
    chain_frames: int = at_least(1)


@dataclass
class SampleKeys(GenerateKeys):
    partial: Optional[str] = MISSING
    init: Optional[str] = MISSING
    strength: Optional[float] = fraction()
    mask: Optional[str] = MISSING
    first_frame: Optional[str] = MISSING
    num_frames: Optional[int] = at_least(1)
    context_frames: Optional[int] = at_least(1)
    export: ExportKeys = field(default_factory=ExportKeys)


@dataclass
class EvaluateKeys(GenerateKeys):
    source: Source = MISSING
    samples_dir: Optional[str] = MISSING
    split: Split = MISSING
    nll: bool = MISSING
    nll_steps: int = at_least(1)


@dataclass
class SdsKeys:
    """`mldm sds`: its ``sds`` node (the distillation settings) is checked against DistillSettings by the
    engine, which owns those types."""
    run_dir: Optional[str] = MISSING
    pretrained: Optional[str] = MISSING
    prompt: Optional[str] = MISSING
    prompts_file: Optional[str] = MISSING
    out_dir: Optional[str] = MISSING
    steps: Optional[int] = at_least(1)
    seed: int = at_least(0)
    field: FieldKind = MISSING
    field_resolution: int = at_least(2)
    field_bound: Optional[float] = positive()
    field_smoothing: Optional[float] = _ranged(lambda v: v >= 0 and math.isfinite(v), ">= 0 and finite")
    density_activation: DensityActivation = MISSING
    mesh_resolution: int = at_least(8)
    mesh_method: MeshMethod = MISSING
    turntable_frames: int = at_least(1)
    checkpoint_every: int = at_least(0)
    overwrite: bool = MISSING
    device: str = MISSING


SCHEMAS = {"train": TrainKeys, "sample": SampleKeys, "evaluate": EvaluateKeys, "sds": SdsKeys}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + " or null"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + "|".join(m.value for m in tp)
    return getattr(tp, "__name__", str(tp))


def _field_type(schema, dotted: str):
    tp = schema
    for name in dotted.split("."):
        tp = typing.get_type_hints(tp)[name]
    return tp


def _pick(values: dict, schema) -> dict:
    """The part of ``values`` the schema declares (recursing into dataclass-typed fields)."""
    hints = typing.get_type_hints(schema)
    picked = {}
    for f in fields(schema):
        if f.name in values:
            v, tp = values[f.name], hints[f.name]
            picked[f.name] = _pick(v, tp) if is_dataclass(tp) and isinstance(v, dict) else v
    return picked


def _write_back(dst: dict, typed: dict, picked: dict) -> None:
    for k, v in picked.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _write_back(dst[k], typed[k], v)
        else:
            dst[k] = typed[k]


def _check_ranges(values: dict, schema, prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        value = values.get(f.name)
        if is_dataclass(hints[f.name]) and isinstance(value, dict):
            _check_ranges(value, hints[f.name], f"{prefix}{f.name}.")
        elif "range" in f.metadata and isinstance(value, (int, float)) and not isinstance(value, bool):
            test, text = f.metadata["range"]
            if not test(value):
                raise ConfigError(f"{prefix}{f.name}={value}: must be {text}")


def check_types(values: dict, schema, prefix: str = "") -> None:
    """Validate (and convert, e.g. '3' -> 3) the keys the schema declares, in place; then their ranges.
    ``prefix`` names where ``values`` sits in the whole config (for the message)."""
    picked = _pick(values, schema)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), picked)
    except ValidationError as e:
        key = e.full_key
        got = OmegaConf.select(OmegaConf.create(picked), key)
        raise ConfigError(f"{prefix}{key}: expected {_type_name(_field_type(schema, key))}, got {got!r}") from None
    _write_back(values, OmegaConf.to_container(typed, enum_to_str=True), picked)
    _check_ranges(values, schema, prefix)


def check_stages(values: dict) -> None:
    """The experiment's ``stages``: each a stage the modality declares, its trainer overrides keys of
    ``trainer`` with the trainer's types and ranges, checked before any stage trains."""
    stages = values.get("stages") or {}
    declared = list(((values.get("modality") or {}).get("stages") or {}))
    trainer = values.get("trainer") or {}
    for name, overrides in stages.items():
        if declared and name not in declared:
            raise ConfigError(f"stages.{name}: the modality declares no stage '{name}' (it declares: "
                              f"{', '.join(declared)})")
        if overrides is None:
            continue
        if not isinstance(overrides, dict):
            raise ConfigError(f"stages.{name}: expected trainer overrides {{key: value}} or null, got {overrides!r}")
        unknown = sorted(set(overrides) - set(trainer))
        if unknown:
            raise ConfigError(f"stages.{name}.{unknown[0]}: not a trainer key (known: {', '.join(sorted(trainer))})")
        merged = {**trainer, **overrides}
        check_types(merged, TrainerKeys, prefix=f"stages.{name}.")
        overrides.update({key: merged[key] for key in overrides})
