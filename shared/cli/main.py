"""The `mldm` command: compose a hydra config, prepare the run directory, hand over to an engine.

    mldm train    experiment=<preset> [run_dir=DIR] [key=value ...]
    mldm sample   run_dir=DIR num_samples=N [sampler=<name>] [steps=K] [prompt="..."] [guidance_scale=G] out_dir=OUT
    mldm evaluate run_dir=DIR [num_samples=N]
    mldm evaluate experiment=<preset> source=data [split=train|val|test|all]

Configs are composed with hydra's compose API (no working-directory change, no hydra output folders)
from <repo root>/configs or $MLDM_CONFIG_DIR; see ``shared.cli.config`` for precedence and validation.
Engines are imported lazily from ENGINES, so this module stays light and `mldm --help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from shared.io.atomic_files import atomic_write_text
from shared.cli.config import SCHEMAS, ConfigError, build_config, config_dir, group_options

# The single dispatch table: command -> "module:function" called with the resolved config.
ENGINES = {
    "train": "shared.training.run:train",
    "sample": "shared.cli.commands:sample",
    "evaluate": "shared.cli.commands:evaluate",
}

USAGE = {
    "train": "mldm train experiment=<preset> [run_dir=DIR] [resume=true] [key=value ...]",
    "sample": "mldm sample run_dir=DIR [num_samples=N] [sampler=<name>] [steps=K] [prompt=\"...\"] "
              "[guidance_scale=G] [out_dir=OUT] [key=value ...]",
    "evaluate": "mldm evaluate run_dir=DIR [num_samples=N] [key=value ...]\n       "
                "mldm evaluate experiment=<preset> source=data [split=train|val|test|all] [key=value ...]",
}

SUMMARY = {
    "train": "train a model; writes <run_dir>/config.yaml, checkpoints/, logs/, samples/",
    "sample": "generate samples from a trained run into out_dir",
    "evaluate": "metrics of generated samples (run_dir) or of the data itself (source=data)",
}

OVERRIDES_HELP = """\
overrides (hydra syntax):
  group=option      switch a config group (schedule=cosine, sampler=ddim, experiment=<preset>)
  key=value         set an existing key (seed=1, trainer.lr=3e-4, sampler.eta=1.0)
  ~key              remove a key or group
  Unknown keys are errors: configs are closed, `+key=value` is not accepted.
  With run_dir (sample, evaluate, train resume=true) DIR/config.yaml is the base:
  command line > the run's config.yaml > this command's defaults.

  --show-config     print the resolved config as YAML and exit (nothing is created or run)"""


def _fail(command: str | None, message: str) -> int:
    prefix = f"mldm {command}" if command else "mldm"
    print(f"{prefix}: error: {message}", file=sys.stderr)
    return 2


def _top_help() -> str:
    lines = ["usage: mldm <command> [key=value ...] [--show-config]", "",
             "mldm: multimodal latent diffusion (one diffusion core; modalities as plug-ins).", "",
             "commands:"]
    lines += [f"  {name:<9} {SUMMARY[name]}" for name in ENGINES]
    lines += ["", "usage per command:"] + [f"  {u.strip()}" for name in ENGINES for u in USAGE[name].split("\n")]
    lines += ["", "`mldm <command> --help` lists the command's keys and config groups.",
              f"configs: {config_dir()}  (set MLDM_CONFIG_DIR to use another tree)"]
    return "\n".join(lines)


def _command_help(command: str) -> str:
    keys = ", ".join(f.name for f in fields(SCHEMAS[command]) if f.name != "trainer")
    try:
        groups = "\n".join(f"  {g:<17} {', '.join(opts) or '(none yet)'}" for g, opts in group_options().items())
    except OSError as e:
        groups = f"  (config tree not readable: {e})"
    return "\n".join([SUMMARY[command], "", f"top-level keys: {keys}", "", "config groups and options:",
                      groups, "", OVERRIDES_HELP])


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"mldm {command}", usage=USAGE[command], add_help=True,
                                     description=_command_help(command),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--show-config", action="store_true", help=argparse.SUPPRESS)
    return parser


def _load_engine(command: str):
    module_name, function = ENGINES[command].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(f"the {command} engine ({module_name}) is not part of this mldm version yet") from None
        raise
    return getattr(module, function)


def _check_modality(command: str, cfg: DictConfig) -> None:
    if cfg.get("modality") is not None:
        return
    presets = ", ".join(group_options().get("experiment", [])) or "none yet"
    run = "" if command == "train" else "run_dir=DIR or "
    raise ConfigError(f"no modality selected: choose {run}experiment=<preset> (available: {presets})")


def _fresh_run_dir() -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir, n = Path("runs") / stamp, 1
    while run_dir.exists():
        n += 1
        run_dir = Path("runs") / f"{stamp}-{n}"
    return run_dir


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create run_dir with checkpoints/, logs/, samples/ and write the resolved config.yaml."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else _fresh_run_dir()
    if not cfg.resume and (run_dir / "config.yaml").exists():
        raise ConfigError(f"run_dir={run_dir} already holds a run; pass resume=true to continue it "
                          f"or choose another run_dir")
    for sub in ("checkpoints", "logs", "samples"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    return run_dir


def run(command: str, overrides: list[str], show_config: bool = False) -> int:
    cfg = build_config(command, overrides)
    if show_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    _check_modality(command, cfg)
    engine = _load_engine(command)  # before anything is written: a missing engine leaves no trace
    if command == "train":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cfg.run_dir:
            raise ConfigError("under torchrun every process needs the same run_dir: pass run_dir=DIR")
        if int(os.environ.get("RANK", "0")) == 0:  # one writer; the other processes only read
            prepare_run_dir(cfg)
    result = engine(cfg)
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in ENGINES:
        return _fail(None, f"unknown command '{command}' (choose from {', '.join(ENGINES)}; see mldm --help)")
    try:
        args = _parser(command).parse_intermixed_args(rest)
    except SystemExit as e:  # --help (0) or an argparse usage error (2)
        return e.code if isinstance(e.code, int) else 0
    try:
        return run(command, args.overrides, args.show_config)
    except ConfigError as e:
        return _fail(command, str(e))


if __name__ == "__main__":
    sys.exit(main())
