"""Training stages declared as data, and the generic steps around each one.

A modality config declares its stages (``shared.contract``)::

    stages:
      autoencoder:
        build: {_target_: modalities.image.task.autoencoder_stage, _partial_: true}
      diffusion:
        build: {_target_: modalities.image.task.diffusion_stage, _partial_: true}
        frozen: [autoencoder]     # stages whose finished weights it uses, frozen
        init_from: null           # a stage whose final weights its modules start from
        import_from: []           # names under which another run (``init_from=RUN_DIR``) holds this stage

The experiment's ``stages:`` chooses which of them run, in order, with trainer overrides. A stage's name
comes from its declaration only: the runner names the task, its checkpoints, logs and previews.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from shared.contract import TrainingTask
from shared.training.checkpoint import latest_checkpoint, load_checkpoint, read_checkpoint_meta, with_prefix
from shared.training.loop import TrainingConfigError

STAGE_KEYS = ("build", "frozen", "init_from", "import_from")


@dataclass(frozen=True)
class StageSpec:
    name: str
    build: DictConfig  # a partial: (cfg, run_dir, device) -> TrainingTask
    frozen: tuple[str, ...] = ()
    init_from: str | None = None
    import_from: tuple[str, ...] = ()


def declared_stages(cfg: DictConfig) -> dict[str, StageSpec]:
    """The modality's stage declarations, checked: known keys, references to declared stages only."""
    declared = cfg.modality.get("stages")
    if not declared:
        raise TrainingConfigError("modality.stages: this modality declares no training stages")
    specs = {}
    for name, node in declared.items():
        unknown = sorted(set(node) - set(STAGE_KEYS))
        if unknown:
            raise TrainingConfigError(f"modality.stages.{name}.{unknown[0]}: not a stage key "
                                      f"(known: {', '.join(STAGE_KEYS)})")
        if node.get("build") is None:
            raise TrainingConfigError(f"modality.stages.{name}.build: a stage needs a builder (_target_)")
        specs[name] = StageSpec(name, node.build, tuple(node.get("frozen") or ()), node.get("init_from"),
                                tuple(node.get("import_from") or ()))
    for spec in specs.values():
        for key, other in [("frozen", s) for s in spec.frozen] + [("init_from", spec.init_from)]:
            if other is not None and other not in specs:
                raise TrainingConfigError(f"modality.stages.{spec.name}.{key}: '{other}' is not a declared stage "
                                          f"(declared: {', '.join(specs)})")
    return specs


def planned_stages(cfg: DictConfig) -> list[tuple[int, StageSpec, DictConfig | None]]:
    """The experiment's stages in its order, as (position, declaration, trainer overrides); a stage set to
    ``null`` (dropped from a parent preset) keeps its position, so the others' seeds do not move."""
    specs = declared_stages(cfg)
    plan = []
    for index, (name, overrides) in enumerate((cfg.get("stages") or {}).items()):
        if name not in specs:
            raise TrainingConfigError(f"stages.{name}: the modality declares no stage '{name}' "
                                      f"(it declares: {', '.join(specs)})")
        if overrides is not None:
            plan.append((index, specs[name], overrides))
    return plan


def finished(run_dir: Path, stage: str) -> bool:
    newest = latest_checkpoint(Path(run_dir) / "checkpoints" / stage)
    return newest is not None and bool(read_checkpoint_meta(newest).get("complete"))


def check_frozen_inputs(spec: StageSpec, run_dir: Path) -> None:
    """Every stage ``spec`` uses frozen has finished in this run (one line naming it, before any work)."""
    for stage in spec.frozen:
        if not finished(run_dir, stage):
            raise TrainingConfigError(f"stage '{spec.name}' uses stage '{stage}' frozen, but "
                                      f"{Path(run_dir) / 'checkpoints' / stage} holds no finished checkpoint of it: "
                                      f"train it first (stages.{stage} in the experiment)")


def build_stage(spec: StageSpec, cfg: DictConfig, run_dir: Path, device: torch.device) -> TrainingTask:
    check_frozen_inputs(spec, run_dir)
    task = instantiate(spec.build)(cfg=cfg, run_dir=run_dir, device=device)
    task.name = spec.name
    return task


def initialise_from(task: TrainingTask, spec: StageSpec, run_dir: Path) -> None:
    """Before a stage's first step (no checkpoint of its own yet): each module takes the weights that the
    ``init_from`` stage's final checkpoint holds under the same name (EMA where kept). Parameters the
    source lacks (layers the new stage adds) keep their initialisation and are listed; a parameter of the
    source the module lacks is an error."""
    if spec.init_from is None or latest_checkpoint(Path(run_dir) / "checkpoints" / spec.name) is not None:
        return
    if not finished(run_dir, spec.init_from):
        raise TrainingConfigError(f"stage '{spec.name}' starts from stage '{spec.init_from}' (init_from), which has "
                                  f"not finished in {run_dir}: train it first")
    source = latest_checkpoint(Path(run_dir) / "checkpoints" / spec.init_from)
    tensors, _ = load_checkpoint(source)
    loaded = []
    for name, module in task.modules().items():
        state = with_prefix(tensors, f"ema.{name}.") or with_prefix(tensors, f"model.{name}.")
        if not state:
            continue
        result = module.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise TrainingConfigError(f"{source}: '{name}' has weights the stage '{spec.name}' module lacks: "
                                      f"{', '.join(result.unexpected_keys[:3])}")
        new = f" ({len(result.missing_keys)} tensors new)" if result.missing_keys else ""
        loaded.append(f"{name}{new}")
    if not loaded:
        raise TrainingConfigError(f"{source}: none of stage '{spec.name}''s modules ({', '.join(task.modules())}) "
                                  f"has weights there to start from")
    print(f"mldm train: {spec.name}: initialised {', '.join(loaded)} from stage '{spec.init_from}'", file=sys.stderr)
