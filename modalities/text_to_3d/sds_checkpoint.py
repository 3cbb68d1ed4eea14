"""Resumable score distillation: everything a run needs to continue bit for bit after step k, in one file.

The field's parameters, Adam's state, the index of the next step, the random generator the loop draws
from and torch's global generator, plus the losses so far, as one safetensors file written atomically
(``export.save_field``: the tensors, and the rest as JSON in the header). A checkpoint carries the identity
of its run (prompt, seed, prior, field and settings): one for any other run is never resumed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.errors import DataError
from shared.training.checkpoint import flatten_optimizer, unflatten_optimizer, with_prefix

from .export import load_field, save_field

FIELD, RNG = "field.", "rng."


def canonical(value):
    """``value`` as it reads back from JSON (tuples become lists), so identities compare equal."""
    return json.loads(json.dumps(value))


@dataclass
class Checkpoint:
    next_step: int
    losses: list[float]
    field: dict[str, torch.Tensor]
    optimizer: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor

    def restore(self, field: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        """Put the saved state into a freshly built field, optimizer and generator."""
        field.load_state_dict(self.field)
        optimizer.load_state_dict(self.optimizer)
        generator.set_state(self.generator)
        torch.set_rng_state(self.torch_rng)


def save_checkpoint(path: Path, field: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                    next_step: int, losses: list[float], identity: dict) -> None:
    """The state after ``next_step`` steps (steps 0 .. next_step − 1 done) into ``path``, atomically."""
    optimizer_tensors, optimizer_meta = flatten_optimizer("adam", optimizer)   # the trainer's own format
    tensors = {**{FIELD + name: value for name, value in field.state_dict().items()}, **optimizer_tensors}
    tensors[RNG + "generator"] = generator.get_state()
    tensors[RNG + "torch"] = torch.get_rng_state()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_field(path, tensors, {"next_step": int(next_step), "losses": [float(v) for v in losses],
                               "identity": canonical(identity), "optimizer": optimizer_meta})


def load_checkpoint(path: Path, identity: dict) -> Checkpoint | None:
    """The checkpoint at ``path`` if there is one for this run (``identity``); None when there is none, it is
    another run's, or it cannot be read (it is only a shortcut: the run then starts from step 0)."""
    if not Path(path).is_file():
        return None
    try:
        tensors, meta = load_field(path)
        if meta.get("identity") != canonical(identity):
            return None
        return Checkpoint(next_step=int(meta["next_step"]), losses=[float(v) for v in meta["losses"]],
                          field=with_prefix(tensors, FIELD), optimizer=_optimizer_state(tensors, meta),
                          generator=tensors[RNG + "generator"], torch_rng=tensors[RNG + "torch"])
    except (DataError, KeyError, TypeError, ValueError):
        return None


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = unflatten_optimizer("adam", tensors, meta["optimizer"])
    # JSON made Adam's betas a list; load_state_dict keeps what it is given
    state["param_groups"] = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group
                             for group in state["param_groups"]]
    return state
