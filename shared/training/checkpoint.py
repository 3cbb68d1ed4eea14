"""Checkpoints as safetensors (every tensor) + JSON (everything else), written atomically.

A checkpoint of step k is the pair ``step_{k:08d}.safetensors`` / ``step_{k:08d}.json``; the JSON is
written last (temp file + rename), so its presence marks a complete checkpoint. Tensors are
namespaced: ``model.<module>.<key>``, ``ema.<module>.<key>``, ``optim.<group>.<param index>.<key>``.

Readers take the newest *sound* checkpoint: one whose JSON parses and whose weights file is as long as
its own header says. A damaged newer one (truncated weights, missing or garbled JSON) is named in one line
with the step used instead; the trainer, the run's one writer, sets such files aside (``*.damaged``).
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared.errors import CheckpointError
from shared.io.atomic_files import atomic_write_path, atomic_write_text
from shared.training.faults import fault_point


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` (e.g. 'model.denoiser.'), with the prefix removed: a state_dict."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def flatten_optimizer(name: str, optimizer: torch.optim.Optimizer):
    """(tensors, json-able rest) of an optimizer's state_dict."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{name}.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(name: str, tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, entry = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[entry] = value
    for key, value in meta["scalars"].items():
        index, entry = key.split(".", 1)
        state.setdefault(int(index), {})[entry] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep_last: int = 3):
    """Write step k atomically; refuse non-finite weights; keep the newest ``keep_last`` checkpoints."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write non-finite weights ({bad[0]} ...) to {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"step_{step:08d}"
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        atomic_write_path(stem.with_suffix(".safetensors"), lambda temporary: _write_weights(contiguous, temporary))
        fault_point("checkpoint_json")
        atomic_write_text(stem.with_suffix(".json"), json.dumps({**meta, "step": step}, indent=1))
    except OSError as error:  # e.g. a full disk: the temporary file is gone, earlier checkpoints are untouched
        raise CheckpointError(f"{stem}: could not write the checkpoint of step {step} ({error.strerror or error}); "
                              f"the previous checkpoints are intact") from error
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)


def _write_weights(tensors: dict[str, torch.Tensor], temporary: Path) -> None:
    save_file(tensors, str(temporary))
    fault_point("checkpoint")


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (their JSON exists), oldest first."""
    return sorted(directory.glob("step_*.json")) if directory.is_dir() else []


def read_checkpoint_meta(json_path: Path) -> dict:
    try:
        return json.loads(Path(json_path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: unreadable checkpoint metadata ({e})") from None


def load_checkpoint(json_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = read_checkpoint_meta(json_path)
    tensor_path = json_path.with_suffix(".safetensors")
    try:
        tensors = load_file(str(tensor_path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{tensor_path}: unreadable or truncated checkpoint ({e}); delete it and its "
                              f".json to resume from the previous one") from None
    return tensors, meta


def checkpoint_problem(json_path: Path) -> str | None:
    """Why the checkpoint ``json_path`` names cannot be used (cheap: reads the JSON and the weights' header)."""
    if not json_path.exists():
        return "weights without their .json (deleted, or the write was cut short)"
    try:
        meta = json.loads(json_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
            return "its .json holds no step"
    except (OSError, ValueError) as error:
        return f"garbled .json ({type(error).__name__})"
    return weights_problem(json_path.with_suffix(".safetensors"))


def weights_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, the JSON header, then the data it lays out: a file
    shorter or longer than the header's last offset was cut short or damaged."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            (header_length,) = struct.unpack("<Q", file.read(8))
            if header_length > size - 8:
                return "truncated weights (header cut)"
            header = json.loads(file.read(header_length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except FileNotFoundError:
        return "its .safetensors is missing"
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError) as error:
        return f"unreadable weights ({type(error).__name__})"
    if 8 + header_length + end != size:
        return f"truncated weights ({size} of {8 + header_length + end} bytes)"
    return None


def _candidates(directory: Path) -> list[Path]:
    """The .json path of every step with either file present, newest first."""
    stems = {p.name.split(".")[0] for p in directory.glob("step_*.json")} | \
            {p.name.split(".")[0] for p in directory.glob("step_*.safetensors")}
    return [directory / f"{stem}.json" for stem in sorted(stems, reverse=True)]


_reported: set[tuple[Path, Path | None]] = set()


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest sound checkpoint's .json; newer damaged ones are named once, with the step used instead."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    damaged = []
    for json_path in _candidates(directory):
        problem = checkpoint_problem(json_path)
        if problem is None:
            _report(damaged, json_path)
            return json_path
        damaged.append((json_path, problem))
    _report(damaged, None)
    return None


def _report(damaged: list[tuple[Path, str]], used: Path | None) -> None:
    if not damaged or (damaged[0][0], used) in _reported:
        return
    _reported.add((damaged[0][0], used))
    newest, problem = damaged[0]
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    instead = f"using step {int(used.stem.split('_')[1])} instead" if used else "no earlier complete checkpoint"
    print(f"mldm: {newest.with_suffix('')}: damaged checkpoint of step {int(newest.stem.split('_')[1])}: "
          f"{problem}{more}; {instead}", file=sys.stderr)


def set_aside_damaged(directory: Path, used: Path | None) -> None:
    """Rename the files of checkpoints newer than ``used`` (damaged ones) to ``*.damaged``, so the writer's
    next checkpoints and their pruning never mix with them. Only the temporary files of writes a killed
    process left half done are deleted (the caller is the run's one writer)."""
    for temporary in Path(directory).glob(".step_*.tmp"):
        temporary.unlink(missing_ok=True)
    for json_path in _candidates(Path(directory)):
        if used is not None and json_path.name <= used.name:
            break
        for path in (json_path, json_path.with_suffix(".safetensors")):
            if path.exists():
                os.replace(path, path.with_name(path.name + ".damaged"))


def load_stage_weights(run_dir: Path, stage: str, modules: dict, prefer_ema: bool = True) -> Path:
    """Load a stage's newest checkpoint into ``modules`` (EMA weights where kept); returns its path."""
    run_dir = Path(run_dir)
    path = latest_checkpoint(run_dir / "checkpoints" / stage)
    if path is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoints' / stage}: no checkpoint of stage '{stage}' "
                                f"(train it first: mldm train ... run_dir={run_dir})")
    tensors, _ = load_checkpoint(path)
    for name, module in modules.items():
        for source in (("ema", "model") if prefer_ema else ("model",)):
            prefix = f"{source}.{name}."
            state = with_prefix(tensors, prefix)
            if state:
                module.load_state_dict(state)
                break
        else:
            raise CheckpointError(f"{path}: no weights for '{name}'")
    return path


def load_frozen_first_stage(module: torch.nn.Module, run_dir: Path, device="cpu") -> torch.nn.Module:
    """``module`` with the weights the run's finished autoencoder stage saved (as trained, not EMA: LDM uses its
    first stage as trained), frozen and in eval mode on ``device``."""
    load_stage_weights(run_dir, "autoencoder", {"autoencoder": module}, prefer_ema=False)
    return module.to(device).eval().requires_grad_(False)
