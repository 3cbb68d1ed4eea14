"""The training loop: one for every modality and stage.

A stage is a ``shared.contract.TrainingTask`` (what to train) plus ``TrainerSettings`` (how). The loop owns
optimisation (groups, accumulation, clipping, LR warm-up, bf16 autocast with fp32 master weights),
EMA, data order, randomness, data parallelism, checkpoints, logs, previews and the NaN guard.
Everything random is a function of (seed, step), so resuming from a checkpoint is exact.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from shared.contract import TrainingTask
from shared.errors import ConfigError, DataError, NonFiniteSamples
from shared.training import distributed
from shared.training.checkpoint import (flatten_optimizer, latest_checkpoint, load_checkpoint, save_checkpoint,
                                        set_aside_damaged, unflatten_optimizer, with_prefix)
from shared.training.ema import EMA
from shared.training.faults import fault_point
from shared.training.finite import non_finite_fields
from shared.training.metrics_log import MetricsLog
from shared.training.precision import resolve_precision
from shared.training.randomness import BatchRandomness, derive_seed


class NonFiniteLoss(RuntimeError):
    """A loss or gradient became NaN/inf; the step was not applied."""


class TrainingConfigError(ConfigError, ValueError):
    """Settings that cannot work (the message names the key)."""


@dataclass
class TrainerSettings:
    max_steps: int
    batch_size: int  # global, per optimizer step
    optimizer: Callable  # partial: optimizer(params) -> torch.optim.Optimizer
    lr_schedule: Callable | None = None  # partial: lr_schedule(step) -> multiplier
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the device has native bf16; shared.training.precision)
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    log_every: int = 50
    sample_every: int = 0
    keep_last: int = 3
    extra: dict = field(default_factory=dict)


def check_batch_split(settings: TrainerSettings, world: int, stage: str) -> int:
    """The micro-batch size: the global batch split over grad_accum micro-batches, each over the processes."""
    micro = settings.batch_size // settings.grad_accum
    if settings.batch_size % settings.grad_accum or micro % world or micro == 0:
        raise TrainingConfigError(f"stages.{stage}.batch_size={settings.batch_size} must split into grad_accum="
                                  f"{settings.grad_accum} micro-batches of a multiple of {world} processes")
    return micro


def data_order(seed: int, num_examples: int, start: int, count: int) -> torch.Tensor:
    """Positions [start, start + count) of the endless stream of per-epoch permutations."""
    out, position = [], start
    while position < start + count:
        epoch, offset = divmod(position, num_examples)
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
        take = min(num_examples - offset, start + count - position)
        out.append(perm[offset:offset + take])
        position += take
    return torch.cat(out)


class Trainer:
    def __init__(self, task: TrainingTask, settings: TrainerSettings, seed: int, checkpoint_dir: Path,
                 log_dir: Path, samples_dir: Path, device: torch.device, rank: int = 0, world: int = 1):
        self.task, self.s, self.seed = task, settings, seed
        self.checkpoint_dir, self.log_dir, self.samples_dir = checkpoint_dir, log_dir, samples_dir
        self.device, self.rank, self.world = device, rank, world
        precision = resolve_precision(settings.precision, device)
        if settings.precision == "auto" and rank == 0:
            print(f"mldm train: {task.name}: trainer.precision=auto -> {precision} on {device.type}", file=sys.stderr)
        self.autocast_bf16 = precision == "bf16"
        self.micro_batch = check_batch_split(settings, world, task.name)
        self.modules = {name: m.to(device) for name, m in task.modules().items()}
        self.groups = task.param_groups()
        self.optimizers = {name: settings.optimizer(params) for name, params in self.groups.items()}
        schedule = settings.lr_schedule or (lambda step: 1.0)
        self.lr_schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule)
                              for name, opt in self.optimizers.items()}
        self.ema = EMA({n: self.modules[n] for n in task.ema_modules()}, settings.ema_decay)
        self.step = 0

    # -- checkpoints -------------------------------------------------------------------------------
    def _state(self, complete: bool):
        tensors = {f"model.{n}.{k}": v for n, m in self.modules.items() for k, v in m.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        meta = {"stage": self.task.name, "complete": complete, "optimizers": {}}
        for name, opt in self.optimizers.items():
            opt_tensors, opt_meta = flatten_optimizer(name, opt)
            tensors.update(opt_tensors)
            meta["optimizers"][name] = opt_meta
        return tensors, meta

    def save(self, complete: bool = False):
        if self.rank == 0:
            tensors, meta = self._state(complete)
            save_checkpoint(self.checkpoint_dir, self.step, tensors, meta, self.s.keep_last)

    def resume(self) -> bool:
        """Load the newest complete checkpoint of this stage (damaged newer ones are set aside and named);
        True if the stage had already finished."""
        path = latest_checkpoint(self.checkpoint_dir)
        if self.rank == 0:
            set_aside_damaged(self.checkpoint_dir, path)
        if path is None:
            return False
        tensors, meta = load_checkpoint(path)
        for name, module in self.modules.items():
            prefix = f"model.{name}."
            module.load_state_dict(with_prefix(tensors, prefix))
        self.ema.load_state_dict(with_prefix(tensors, "ema."))
        for name, opt in self.optimizers.items():
            opt.load_state_dict(unflatten_optimizer(name, tensors, meta["optimizers"][name]))
        self.step = meta["step"]
        for scheduler in self.lr_schedulers.values():
            scheduler.last_epoch = self.step
            scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
        complete = bool(meta.get("complete"))
        if self.rank == 0:
            state = f"finished at step {self.step}; skipped" if complete else f"resuming from step {self.step}"
            print(f"mldm train: {self.task.name}: {state} ({path.name})", file=sys.stderr)
        return complete

    # -- one optimizer step ------------------------------------------------------------------------
    def _micro_indices(self, micro: int) -> torch.Tensor:
        start = self.step * self.s.batch_size + micro * self.micro_batch
        indices = data_order(self.seed, self.task.num_examples(), start, self.micro_batch)
        per_rank = self.micro_batch // self.world
        return indices[self.rank * per_rank:(self.rank + 1) * per_rank]

    def train_step(self) -> dict[str, float]:
        torch.manual_seed(derive_seed(self.seed, self.step, self.rank, 1))  # e.g. dropout
        logs: dict[str, float] = {}
        for micro in range(self.s.grad_accum):
            batch = self.task.batch(self._micro_indices(micro), self.device)
            random = BatchRandomness(self.seed, self.step, micro, self.rank, self.world, self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
                losses, micro_logs = self.task.losses(batch, random, self.step)
            finite = all(bool(torch.isfinite(v).all()) for v in losses.values())
            if distributed.any_across(not finite, self.world, self.device):  # every process takes part, then
                if not finite:                                                 # the one holding NaN data says so
                    self._blame_data(batch, micro)
                bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
                raise NonFiniteLoss(f"non-finite {'/'.join(bad) or 'loss on another process'} at step {self.step}")
            names = list(losses)
            for i, name in enumerate(names):
                torch.autograd.backward(losses[name].float() / self.s.grad_accum, inputs=self.groups[name],
                                        retain_graph=i < len(names) - 1)
            for key, value in micro_logs.items():
                logs[key] = logs.get(key, 0.0) + float(value) / self.s.grad_accum
        fault_point("step")
        for name, opt in self.optimizers.items():
            params = self.groups[name]
            distributed.average_gradients(params, self.world)
            if self.s.grad_clip:
                norm = float(torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip))
                if not math.isfinite(norm):
                    raise NonFiniteLoss(f"non-finite gradients of '{name}' at step {self.step}")
                logs[f"grad_norm_{name}"] = norm
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.lr_schedulers[name].step()
            logs[f"lr_{name}"] = self.lr_schedulers[name].get_last_lr()[0]
        self.ema.update(self.step)
        self.step += 1
        return logs

    def _blame_data(self, batch, micro: int) -> None:
        """A non-finite loss from a batch that holds NaN/inf is the data's fault: say so, naming the items."""
        bad = list(non_finite_fields(batch))
        if bad:
            items = self._micro_indices(micro).tolist()
            raise DataError(f"the training data holds NaN/inf: {', '.join(bad[:3])} of the batch at step {self.step} "
                            f"(dataset items {items[:8]}{' ...' if len(items) > 8 else ''}); fix or remove those "
                            f"records (loaders with skip_bad=true leave bad records out)")

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> int:
        if self.resume():
            return self.step
        log = MetricsLog(self.log_dir, self.task.name, self.step, self.s.max_steps, enabled=self.rank == 0)
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.step < self.s.max_steps:
                logs = self.train_step()
                window_steps += 1
                log.advance()
                if self.step % self.s.log_every == 0 or self.step == self.s.max_steps:
                    logs = distributed.mean_across(logs, self.world, self.device)
                    logs["it_per_s"] = window_steps / max(time.perf_counter() - window_start, 1e-9)
                    log.log(self.step, logs)
                    window_start, window_steps = time.perf_counter(), 0
                if self.s.checkpoint_every and self.step % self.s.checkpoint_every == 0 and self.step < self.s.max_steps:
                    self.save()
                if self.rank == 0 and self.s.sample_every and self.step % self.s.sample_every == 0:
                    self.preview()
        finally:
            log.close()
        self.task.finalize()
        self.save(complete=True)
        return self.step

    def preview(self):
        """A preview that diverges is reported and skipped: it says nothing about the weights being trained."""
        try:
            with self.ema.swapped_in(), torch.no_grad():
                self.task.preview(self.step, self.samples_dir / self.task.name / f"step_{self.step:08d}")
        except NonFiniteSamples as error:
            print(f"mldm train: {self.task.name}: preview at step {self.step} skipped: {error}", file=sys.stderr)


def warmup_then_constant(step: int, warmup_steps: int = 0) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def warmup_then_cosine(step: int, warmup_steps: int, max_steps: int, final_fraction: float = 0.0) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
