"""Checkpoints as safetensors (every tensor) + JSON (everything else), written atomically.

A checkpoint of step k is the pair ``step_{k:08d}.safetensors`` / ``step_{k:08d}.json``; the JSON is
written last (temp file + rename), so its presence marks a complete checkpoint. Tensors are
namespaced: ``model.<module>.<key>``, ``ema.<module>.<key>``, ``optim.<group>.<param index>.<key>``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared.io.atomic_files import atomic_write_path, atomic_write_text


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


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
    atomic_write_path(stem.with_suffix(".safetensors"), lambda temporary: save_file(contiguous, str(temporary)))
    atomic_write_text(stem.with_suffix(".json"), json.dumps({**meta, "step": step}, indent=1))
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)


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


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


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
            raise KeyError(f"{path}: no weights for '{name}'")
    return path


def load_frozen_first_stage(module: torch.nn.Module, run_dir: Path, device="cpu") -> torch.nn.Module:
    """``module`` with the weights the run's finished autoencoder stage saved (as trained, not EMA: LDM uses its
    first stage as trained), frozen and in eval mode on ``device``."""
    load_stage_weights(run_dir, "autoencoder", {"autoencoder": module}, prefer_ema=False)
    return module.to(device).eval().requires_grad_(False)
