"""Config composition and validation for the CLI: hydra's compose API, a run's config as base, typed keys.

Precedence when a run directory is the base (``mldm sample|evaluate run_dir=DIR``, ``mldm train
resume=true``): command line > DIR/config.yaml > the command's defaults. A group switch on the command
line (``sampler=ddim``) replaces the run's whole node; ``key=value`` edits it. Keys that do not exist
are errors (configs are closed: no ``+key=value``). The top-level keys of each command and the trainer
keys are type- and range-checked against ``shared.cli.schema``; other keys are free-form.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from shared.cli.schema import SCHEMAS, TrainKeys, check_stages, check_types
from shared.errors import ConfigError  # noqa: F401 (re-exported: callers import it from here)

GLOBAL_GROUPS = ("experiment",)  # groups whose options are `# @package _global_` presets


def config_dir() -> Path:
    """<repo root>/configs (the repo root is the parent of the `shared` package), or $MLDM_CONFIG_DIR."""
    return Path(os.environ.get("MLDM_CONFIG_DIR") or Path(__file__).resolve().parents[2] / "configs")


def group_options(root: Path | None = None) -> dict[str, list[str]]:
    """{group: [option, ...]} for every top-level group folder of the config tree."""
    root = root or config_dir()
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(root.iterdir()) if d.is_dir()}


def one_line(text: str) -> str:
    """Hydra/OmegaConf messages span lines (and list the search path); keep the first useful part."""
    text = str(text).split("\nConfig search path")[0]
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _parse(overrides: list[str], root: Path):
    """Split overrides into group switches (handled by hydra) and key=value edits (applied by us)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(one_line(e)) from None
    groups, values = [], []
    for text, o in zip(overrides, parsed):
        key = o.key_or_group
        if o.is_add() or o.is_force_add():
            raise ConfigError(f"'{text}': adding keys with +key=value is not allowed (mldm configs are "
                              f"closed); check the key name against --show-config")
        if o.is_sweep_override():
            raise ConfigError(f"'{text}': sweeps are not supported; run one command per value")
        if key.split(".")[0] == "hydra":
            raise ConfigError(f"'{text}': hydra's own settings are not used by mldm")
        is_group = "/" in key or (root / key).is_dir()
        (groups if is_group else values).append((text, o))
    return groups, values


def _compose(name: str, overrides: list[str], root: Path) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(root), version_base=None):
            return compose(config_name=name, overrides=overrides)
    except HydraException as e:
        raise ConfigError(one_line(e)) from None


# Modules that moved into shared/'s sub-packages; a run directory written before the move names the old ones.
MOVED_MODULES = {f"shared.{old}": f"shared.{new}" for old, new in {
    "schedules": "diffusion.schedules", "parameterization": "diffusion.parameterization",
    "losses": "diffusion.losses", "samplers": "diffusion.samplers", "adaptive": "diffusion.adaptive",
    "guidance": "diffusion.guidance", "diffusers_adapter": "diffusion.diffusers_adapter",
    "gan": "first_stage.gan", "autoencoder": "first_stage.autoencoder",
    "conditioning": "conditioning.conditioners", "text_encoder": "conditioning.text_encoder"}.items()}


def _moved_targets(node):
    """``node`` with every ``_target_`` under a moved module renamed to its new place."""
    if isinstance(node, dict):
        replaced = node.get("_target_") in REPLACED_TARGETS
        return {k: (_renamed_target(v) if k == "_target_" else _moved_targets(v)) for k, v in node.items()
                if not (replaced and k == "_partial_")}
    if isinstance(node, list):
        return [_moved_targets(v) for v in node]
    return node


# Targets that became builders: a run directory's `_partial_: true` for them is dropped.
REPLACED_TARGETS = {"shared.samplers.sample_ddpm": "shared.cli.samplers.ddpm"}


def _renamed_target(target):
    if target in REPLACED_TARGETS:
        return REPLACED_TARGETS[target]
    module = str(target).rsplit(".", 1)[0]
    return MOVED_MODULES[module] + target[len(module):] if module in MOVED_MODULES else target


OLD_TASK_FACTORIES = {  # run directories written before stages were declared name one factory per modality
    "modalities.image.task.build_task": "image", "modalities.molecule.task.build_task": "molecule",
    "modalities.shape.pointcloud_task.build_task": "pointcloud", "modalities.shape.sdf_task.build_task": "sdf"}


def upgrade_task_factory(modality: dict, config_root: Path) -> dict:
    """An old run's ``modality.task`` (one factory dispatching on stage names) replaced by the stage
    declarations of the same modality today, so its directory still resumes and samples."""
    if isinstance(modality.get("export"), dict) and "chain" in modality["export"]:  # now the command's export.chain
        modality = {**modality, "export": {k: v for k, v in modality["export"].items() if k != "chain"}}
    target = (modality.get("task") or {}).get("_target_")
    if "stages" in modality or target not in OLD_TASK_FACTORIES:
        return modality
    current = OmegaConf.load(config_root / "modality" / f"{OLD_TASK_FACTORIES[target]}.yaml")
    upgraded = {k: v for k, v in modality.items() if k != "task"}
    return {**upgraded, "stages": OmegaConf.to_container(current.stages)}


def load_run_config(run_dir: str | Path) -> DictConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run_dir={run_dir}: no config.yaml there (not a training run directory)")
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:  # yaml's and OmegaConf's many types: a damaged or hand-edited file
        raise ConfigError(f"{path}: unreadable ({type(error).__name__}: {one_line(error)[:200]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: not a mapping of config keys")
    tree = _moved_targets(tree)
    if isinstance(tree.get("modality"), dict):
        tree["modality"] = upgrade_task_factory(tree["modality"], config_dir())
    return OmegaConf.create(tree)


def _assemble(defaults: DictConfig, groups, values, base: DictConfig | None) -> DictConfig:
    """base (a run's config) over the command's defaults, then the command line on top."""
    tree: dict[str, Any] = OmegaConf.to_container(defaults, resolve=False)
    if base is not None:  # shallow: the run's top-level nodes win whole, the defaults fill what it lacks
        tree = {**OmegaConf.to_container(base, resolve=False),
                **{k: v for k, v in tree.items() if k not in base}}
        for text, o in groups:
            path = o.package or o.key_or_group.replace("/", ".")
            if path in GLOBAL_GROUPS:
                raise ConfigError(f"'{text}' cannot be combined with a run_dir: the run's config fixes it")
            node = OmegaConf.select(defaults, path)
            if node is None:
                tree.pop(path, None)  # ~group
            else:
                tree[path] = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    cfg = OmegaConf.create(tree)
    OmegaConf.set_struct(cfg, True)
    for text, o in values:
        try:
            if o.is_delete():
                parent, _, leaf = o.key_or_group.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                if not isinstance(node, DictConfig) or leaf not in node:
                    raise KeyError(leaf)
                with open_dict(node):
                    del node[leaf]
            else:
                with _open_stage_node(cfg, o.key_or_group):
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except (OmegaConfBaseException, KeyError) as e:
            if OmegaConf.select(cfg, o.key_or_group, default=KeyError) is not KeyError:
                raise ConfigError(f"cannot apply '{text}': {one_line(e)}") from None
            raise ConfigError(f"unknown key '{o.key_or_group}' in '{text}' (adding keys with +key=value "
                              f"is not allowed; see --show-config for the valid keys)") from None
    return cfg


def _open_stage_node(cfg: DictConfig, key: str):
    """``stages.<stage>.<trainer key>=v`` may set a trainer key the preset's stage node does not list yet."""
    parts = key.split(".")
    node = OmegaConf.select(cfg, f"stages.{parts[1]}") if len(parts) == 3 and parts[0] == "stages" else None
    if isinstance(node, DictConfig) and parts[2] in (cfg.get("trainer") or {}):
        return open_dict(node)
    return contextlib.nullcontext()


def _resolve(cfg: DictConfig, schema) -> DictConfig:
    """Resolve interpolations, check types, apply `guidance_scale`; a plain struct-mode DictConfig."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: a value is required ({missing[0]}=...)")
    try:
        values = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(one_line(e)) from None
    check_types(values, schema)
    if schema is TrainKeys:
        check_stages(values)
    scale = values.get("guidance_scale")
    if scale is not None:
        guidance = values.get("guidance")
        if not isinstance(guidance, dict) or guidance.get("scale") is None:  # guidance=none: scale null
            raise ConfigError(f"guidance_scale={scale} needs a guidance with a scale (e.g. guidance=cfg)")
        guidance["scale"] = scale
    out = OmegaConf.create(values)
    OmegaConf.set_struct(out, True)
    return out


def build_config(command: str, overrides: list[str], root: Path | None = None) -> DictConfig:
    """The resolved, validated config of ``mldm <command> overrides...`` (raises ConfigError)."""
    root = root or config_dir()
    schema = SCHEMAS[command]
    groups, values = _parse(overrides, root)
    defaults = _compose(command, [text for text, _ in groups], root)
    run_keys = {o.key_or_group: o.value() for _, o in values if o.key_or_group in ("run_dir", "resume")}
    check_types(run_keys, schema)
    run_dir, resume = run_keys.get("run_dir"), run_keys.get("resume", False)
    if command == "train" and resume and not run_dir:
        raise ConfigError("resume=true needs run_dir=DIR (the run to continue)")
    base = load_run_config(run_dir) if run_dir and (command != "train" or resume) else None
    return _resolve(_assemble(defaults, groups, values, base), schema)
