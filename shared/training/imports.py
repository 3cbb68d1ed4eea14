"""A run that starts from another run's finished stages (``mldm train ... init_from=RUN_DIR``).

A modality declares which of its stages another run may supply, and under which names that run holds them
(``import_from`` in the stage's declaration; a video run takes an image run's ``diffusion`` as its
``image_diffusion``). With ``init_from`` each such stage that RUN_DIR has finished is copied into this run's
checkpoints and not trained here, so the run directory stays self-contained (``mldm sample`` needs nothing
else). The parts that fix those weights' shapes and meaning must match the source run's config.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from shared.errors import ConfigError
from shared.io.atomic_files import atomic_write_path
from shared.training.checkpoint import latest_checkpoint
from shared.training.stage_spec import StageSpec, finished

MATCHING_KEYS = ("autoencoder", "backbone", "schedule", "parameterization", "modality.conditioner", "data.size")


def check_compatible(cfg: DictConfig, source_cfg: DictConfig, source: Path) -> None:
    for key in MATCHING_KEYS:
        ours, theirs = OmegaConf.select(cfg, key), OmegaConf.select(source_cfg, key)
        as_plain = (lambda node: OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
        if as_plain(ours) != as_plain(theirs):
            raise ConfigError(f"init_from={source}: its {key} ({as_plain(theirs)}) differs from this run's "
                              f"({as_plain(ours)}); set {key} to match the run whose weights it starts from")


def imported_stages(cfg: DictConfig, specs: list[StageSpec], run_dir: Path) -> set[str]:
    """Copy the stages of ``specs`` that ``cfg.init_from`` supplies into ``run_dir``; returns their names (the
    runner does not train them). Without ``init_from``: nothing."""
    source = cfg.get("init_from")
    if not source:
        return set()
    source = Path(source)
    if not (source / "config.yaml").is_file():
        raise ConfigError(f"init_from={source}: not a run directory (no config.yaml)")
    importable = [spec for spec in specs if spec.import_from]
    if not importable:
        raise ConfigError(f"init_from={source}: this modality's stages take nothing from another run")
    check_compatible(cfg, OmegaConf.load(source / "config.yaml"), source)
    taken = set()
    for spec in importable:
        if finished(run_dir, spec.name):  # resumed: copied before
            taken.add(spec.name)
            continue
        theirs = next((name for name in spec.import_from if finished(source, name)), None)
        if theirs is None:
            continue
        newest = latest_checkpoint(source / "checkpoints" / theirs)
        target = run_dir / "checkpoints" / spec.name
        target.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):  # the JSON last: it marks the checkpoint complete
            atomic_write_path(target / newest.with_suffix(suffix).name,
                              lambda partial, suffix=suffix: shutil.copyfile(newest.with_suffix(suffix), partial))
        print(f"mldm train: {spec.name}: taken from {newest.with_suffix('')} (init_from)", file=sys.stderr)
        taken.add(spec.name)
    if not taken:
        names = ", ".join(f"{spec.name} (as {' or '.join(spec.import_from)})" for spec in importable)
        raise ConfigError(f"init_from={source}: it has finished none of the stages this run can take: {names}")
    return taken
