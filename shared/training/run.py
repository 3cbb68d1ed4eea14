"""`mldm train`: build each stage's task from the config and run the loop over the stages in order.

The experiment preset lists ``stages`` (e.g. autoencoder, then diffusion), each with overrides of
``trainer`` (``null`` drops a stage); the modality declares what each stage is (``shared.training.stage_spec``).
A finished stage is skipped on resume, an interrupted one continues from its newest checkpoint.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from shared.errors import ConfigError
from shared.io.skipped_inputs import LOG_NAME, skipped_inputs_log
from shared.training import distributed
from shared.training.checkpoint import latest_checkpoint
from shared.training.faults import fault_point
from shared.training.loop import NonFiniteLoss, Trainer, TrainerSettings, TrainingConfigError, check_batch_split
from shared.training.randomness import derive_seed
from shared.training.imports import imported_stages
from shared.training.stage_spec import build_stage, declared_stages, initialise_from, planned_stages

TRAINER_KEYS = set(TrainerSettings.__dataclass_fields__) - {"extra"} | {"lr", "warmup_steps", "sample_steps",
                                                                         "sample_count"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stage_settings(trainer: DictConfig, overrides: DictConfig | None, stage: str) -> TrainerSettings:
    """cfg.trainer with the stage's overrides on top; unknown keys are named."""
    merged = OmegaConf.to_container(trainer, resolve=True)
    for key, value in (OmegaConf.to_container(overrides, resolve=True) if overrides else {}).items():
        if key not in merged:
            raise TrainingConfigError(f"stages.{stage}.{key}: not a trainer key (known: {', '.join(sorted(merged))})")
        merged[key] = value
    optimizer = instantiate({**merged.pop("optimizer"), "lr": merged["lr"]})
    lr_schedule = instantiate(merged.pop("lr_schedule"), warmup_steps=merged["warmup_steps"],
                              max_steps=merged["max_steps"]) if merged.get("lr_schedule") else None
    fields = TrainerSettings.__dataclass_fields__
    extra = {k: v for k, v in merged.items() if k not in fields}
    return TrainerSettings(optimizer=optimizer, lr_schedule=lr_schedule, extra=extra,
                           **{k: v for k, v in merged.items() if k in fields and k not in ("optimizer", "lr_schedule")})


def stage_dirs(run_dir: Path, stage: str) -> dict[str, Path]:
    return {"checkpoint_dir": run_dir / "checkpoints" / stage, "log_dir": run_dir / "logs",
            "samples_dir": run_dir / "samples"}


def train(cfg: DictConfig) -> int:
    """Every planned stage in order; user errors propagate (the CLI prints them as one line, exit 2)."""
    device = resolve_device(cfg.get("device", "auto"))
    run_dir = Path(cfg.run_dir)
    if not cfg.get("stages"):
        raise ConfigError("stages: the experiment defines no stages to train")
    plan = planned_stages(cfg)
    imported = imported_stages(cfg, list(declared_stages(cfg).values()), run_dir)
    plan = [(index, spec, overrides) for index, spec, overrides in plan if spec.name not in imported]
    settings = {spec.name: stage_settings(cfg.trainer, overrides, spec.name) for _, spec, overrides in plan}
    rank, world = distributed.setup(device)
    stage = None
    try:
        for name, stage_setting in settings.items():  # every stage's settings hold before the first one trains
            check_batch_split(stage_setting, world, name)
        for index, spec, _ in plan:
            stage = spec.name
            torch.manual_seed(derive_seed(cfg.seed, index))  # the networks' initial weights: a function of the seed
            with skipped_inputs_log(run_dir / "logs" / LOG_NAME):
                task = build_stage(spec, cfg, run_dir, device)
            initialise_from(task, spec, run_dir)
            Trainer(task, settings[stage], cfg.seed, device=device, rank=rank, world=world,
                    **stage_dirs(run_dir, stage)).fit()
            fault_point("stage_end")
    except NonFiniteLoss as e:
        last = latest_checkpoint(run_dir / "checkpoints" / stage)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        print(f"mldm train: stopped: {e}; weights were not updated with it and {kept}. Lower trainer.lr, "
              f"enable trainer.grad_clip or use precision=fp32, then resume=true.", file=sys.stderr)
        return 3
    finally:
        distributed.teardown()
    return 0
