"""The `mldm` command: compose a hydra config, prepare the run directory, hand over to an engine.

    mldm train    experiment=<preset> [run_dir=DIR] [key=value ...]
    mldm sample   run_dir=DIR num_samples=N [sampler=<name>] [steps=K] [prompt="..."] [guidance_scale=G] out_dir=OUT
    mldm evaluate run_dir=DIR [num_samples=N]
    mldm evaluate experiment=<preset> source=data [split=train|val|test|all]
    mldm evaluate samples_dir=OUT   (an `mldm sds` output: the mesh judge)
    mldm sds      run_dir=DIR|pretrained=SD_DIR prompt="..."|prompts_file=FILE [out_dir=OUT] [steps=N] [field=voxel|mlp|sdf]

A user error (config, data, checkpoint, option; ``shared.errors``) ends in one line naming the key, file
or record, exit code 2; any other exception is a bug in mldm, reported in one line with exit code 1.
``--debug`` (or ``MLDM_DEBUG=1``) shows the traceback instead.
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

from omegaconf import DictConfig, OmegaConf

from shared.cli.config import SCHEMAS, build_config, config_dir, group_options, one_line
from shared.errors import ConfigError, UserError, find_cause
from shared.io.run_dir import open_run_dir

# The single dispatch table: command -> "module:function" called with the resolved config.
ENGINES = {
    "train": "shared.training.run:train",
    "sample": "shared.cli.commands:sample",
    "evaluate": "shared.cli.commands:evaluate",
    "sds": "modalities.text_to_3d.command:sds",
}

USAGE = {
    "train": "mldm train experiment=<preset> [run_dir=DIR] [resume=true] [key=value ...]",
    "sample": "mldm sample run_dir=DIR [num_samples=N] [sampler=<name>] [steps=K] [prompt=\"...\"] "
              "[guidance_scale=G] [out_dir=OUT] [key=value ...]",
    "evaluate": "mldm evaluate run_dir=DIR [num_samples=N] [key=value ...]\n       "
                "mldm evaluate experiment=<preset> source=data [split=train|val|test|all] [key=value ...]\n       "
                "mldm evaluate samples_dir=OUT (an mldm sds output: the mesh judge)",
    "sds": "mldm sds run_dir=DIR|pretrained=SD_DIR prompt=\"...\"|prompts_file=FILE [out_dir=OUT] [steps=N] [seed=S] "
           "[field=voxel|mlp|sdf] [sds.<setting>=V ...]",
}

SUMMARY = {
    "train": "train a model; writes <run_dir>/config.yaml, checkpoints/, logs/, samples/",
    "sample": "generate samples from a trained run into out_dir",
    "evaluate": "metrics of generated samples (run_dir) or of the data itself (source=data)",
    "sds": "text to 3D by score distillation on an image run: meshes, turntables, fields into out_dir",
}

OVERRIDES_HELP = """\
overrides (hydra syntax):
  group=option      switch a config group (schedule=cosine, sampler=ddim, experiment=<preset>)
  key=value         set an existing key (seed=1, trainer.lr=3e-4, sampler.eta=1.0)
  ~key              remove a key or group
  Unknown keys are errors: configs are closed, `+key=value` is not accepted.
  With run_dir (sample, evaluate, train resume=true) DIR/config.yaml is the base:
  command line > the run's config.yaml > this command's defaults.

  --show-config     print the resolved config as YAML and exit (nothing is created or run)
  --debug           on an error, show the Python traceback (also: MLDM_DEBUG=1)"""


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
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
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
    if cfg.get("modality") is not None or command == "sds":   # sds: its engine names the prior it lacks
        return
    if command == "evaluate" and cfg.get("samples_dir"):
        from shared.cli.commands import marked_judge   # the engine's module, imported next anyway
        if marked_judge(cfg):   # a sample directory that names its own judge (mldm sds output)
            return
    presets = ", ".join(group_options().get("experiment", [])) or "none yet"
    run = "" if command == "train" else "run_dir=DIR or "
    raise ConfigError(f"no modality selected: choose {run}experiment=<preset> (available: {presets})")


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
            with open_run_dir(cfg):
                return _exit_code(engine(cfg))
    return _exit_code(engine(cfg))


def _exit_code(result) -> int:
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
    except Exception as error:
        if args.debug or os.environ.get("MLDM_DEBUG", "") not in ("", "0"):
            raise
        return _report(command, error)


def _report(command: str, error: Exception) -> int:
    """One line for any error: exit 2 for what the user can fix, 1 for a bug in mldm."""
    # a ValueError (a bad value: e.g. a config option a builder rejects) or an OSError (a missing file, a full
    # disk) counts as the user's too
    cause = find_cause(error, (UserError,)) or find_cause(error, (ValueError, OSError))
    if cause is not None:
        if isinstance(cause, OSError) and cause.filename is not None and cause.strerror:
            return _fail(command, f"{cause.filename}: {cause.strerror}")
        return _fail(command, one_line(cause) or type(cause).__name__)
    print(f"mldm {command}: internal error: {type(error).__name__}: {one_line(error)} (a bug in mldm; "
          f"rerun with --debug for the traceback and report it)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
