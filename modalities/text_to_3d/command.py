"""`mldm sds`: text to 3D by score distillation on a trained mldm image run (the engine; config in
configs/sds.yaml).

Per prompt i (stem ``{i:06d}``, seed ``seed + i``): a fresh field, ``distill`` with a progress bar, then the
files of ``sds_output`` into out_dir. Resumable: every ``checkpoint_every`` steps the state to continue bit
for bit (``sds_checkpoint``) goes to ``.<out_dir name>.sds_state/<stem>.safetensors`` beside out_dir (beside,
not inside: the sample-directory writer replaces out_dir whole, and would count a folder of its own there as
the user's); rerunning the same command skips the prompts samples.jsonl lists and resumes the interrupted one.
"""
from __future__ import annotations

import inspect
import shutil
import sys
import time
import typing
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from shared.cli.commands import writing_to
from shared.errors import ConfigError
from shared.training.run import resolve_device

from .distill import DistillSettings, distill, load_prior, make_optimizer, make_particle, trained_modules
from .fields import MLPField, SDFVoxelField, VoxelField
from .mesh_judge import MARKER_FILE
from .sds_checkpoint import canonical, load_checkpoint, save_checkpoint
from .sds_output import export_prompt, finished, stem_of, write_outputs
from .stable_diffusion import StableDiffusionPrior

FIELDS = {"voxel": VoxelField, "mlp": MLPField, "sdf": SDFVoxelField}
IMAGE_PIPELINE = "modalities.image.pipeline.ImagePipeline"


def read_prompts(cfg: DictConfig) -> list[str]:
    """``prompt`` or the lines of ``prompts_file`` (blank lines and ``#`` comments skipped): exactly one."""
    if (cfg.prompt is None) == (cfg.prompts_file is None):
        given = "both" if cfg.prompt is not None else "neither"
        raise ConfigError(f"give exactly one of prompt=\"...\" or prompts_file=FILE (got {given})")
    if cfg.prompt is not None:
        if not cfg.prompt.strip():
            raise ConfigError("prompt= is empty")
        return [cfg.prompt.strip()]
    path = Path(cfg.prompts_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"prompts_file={path}: cannot read it ({type(error).__name__}: "
                          f"{getattr(error, 'strerror', None) or error})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts_file={path}: holds no prompt (blank lines and # comments are skipped)")
    return prompts


def _setting(key: str, value, default):
    """``value`` converted to the type of DistillSettings' ``default`` for it, or a ConfigError naming ``key``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool) and isinstance(value, bool):
        return value
    if isinstance(default, int) and not isinstance(default, bool) and number and float(value).is_integer():
        return int(value)
    if isinstance(default, float) and number:
        return float(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, tuple) and isinstance(value, (list, tuple)) and len(value) == len(default) \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    if not isinstance(default, (bool, int, float, str, tuple)):
        return value
    wanted = f"a list of {len(default)} numbers" if isinstance(default, tuple) else type(default).__name__
    raise ConfigError(f"{key}={value!r}: expected {wanted}")


def _example(name: str, f):
    """A value of the type DistillSettings declares for ``name`` (its default; for an optional setting
    defaulting to None, a value of the type beside None)."""
    default = f.default if f.default is not MISSING else f.default_factory()
    if default is not None:
        return default
    kinds = [k for k in typing.get_args(typing.get_type_hints(DistillSettings)[name]) if k is not type(None)]
    return kinds[0]()


def distill_settings(node, steps: int | None = None) -> DistillSettings:
    """DistillSettings from the config's ``sds`` node (read field by field, so the dataclass decides the names
    and types); ``steps`` (the top-level key) replaces ``sds.steps`` when given."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    known = {f.name: f for f in fields(DistillSettings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"sds.{unknown[0]}: not a distillation setting (known: {', '.join(known)})")
    chosen = {}
    for name, f in known.items():
        if name in values:
            optional = f.default is None and values[name] is None
            chosen[name] = None if optional else _setting(f"sds.{name}", values[name], _example(name, f))
    if steps is not None:
        chosen["steps"] = steps
    for name in ("steps", "size"):
        if chosen.get(name) is not None and chosen[name] < 1:
            raise ConfigError(f"sds.{name}={chosen[name]}: must be >= 1")
    return DistillSettings(**chosen)


def field_spec(cfg: DictConfig) -> dict:
    """{"kind", "args"}: the field class and every constructor argument (so a saved field can be rebuilt)."""
    cls = FIELDS[cfg.field]
    args = {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}
    if "resolution" in args:
        args["resolution"] = cfg.field_resolution
    if "smoothing" in args and cfg.field_smoothing is not None:
        args["smoothing"] = cfg.field_smoothing
    if cfg.field_bound is not None:
        args["bound"] = cfg.field_bound
    if "density_activation" in args:
        args["density_activation"] = cfg.density_activation
    return {"kind": cfg.field, "args": args}


def build_field(spec: dict) -> torch.nn.Module:
    return FIELDS[spec["kind"]](**spec["args"])


def prior_source(cfg: DictConfig) -> tuple[str, Path]:
    """("run_dir", an mldm image run) or ("pretrained", a local Stable Diffusion folder): exactly one given."""
    if (cfg.run_dir is None) == (cfg.pretrained is None):
        given = "both" if cfg.run_dir is not None else "neither"
        raise ConfigError(f"give exactly one prior: run_dir=RUN (an mldm image run) or pretrained=DIR (a local "
                          f"diffusers Stable Diffusion folder) (got {given})")
    if cfg.pretrained is not None:
        return "pretrained", Path(cfg.pretrained)
    _check_image_run(cfg)
    return "run_dir", Path(cfg.run_dir)


def load_any_prior(kind: str, path: Path, device):
    if kind == "pretrained":
        return StableDiffusionPrior(path, device)
    return load_prior(path, device)


def _check_image_run(cfg: DictConfig) -> None:
    target = OmegaConf.select(cfg, "modality.pipeline._target_")
    if target != IMAGE_PIPELINE:
        raise ConfigError(f"run_dir={cfg.run_dir}: not an image run (its pipeline is {target}); mldm sds distils "
                          f"from a text-conditioned image prior, e.g. one trained with experiment=text3d_prior_tiny")


def distill_prompt(prior, prompt: str, seed: int, settings: DistillSettings, spec: dict, state_file: Path,
                   checkpoint_every: int, device, identity: dict, label: str) -> tuple[torch.nn.Module, list[float]]:
    """One prompt's field, from its checkpoint when ``state_file`` holds one for this run; checkpoints every
    ``checkpoint_every`` steps (through distill's on_step). Returns (field, the losses of all its steps)."""
    field = build_field(spec).to(device)
    torch.manual_seed(seed)                        # anything drawing from torch's global stream: reproducible too
    generator = torch.Generator().manual_seed(seed)
    particle = make_particle(prior, settings)
    trained = trained_modules(field, particle)     # VSD's copy of the prior is checkpointed with the field
    optimizer = make_optimizer(field, settings, particle)
    start, losses = 0, []
    checkpoint = load_checkpoint(state_file, identity)
    if checkpoint is not None:
        checkpoint.restore(trained, optimizer, generator)
        start, losses = checkpoint.next_step, list(checkpoint.losses)
        print(f"mldm sds: {label}: resuming from step {start} ({state_file})", file=sys.stderr)
    bar = tqdm(total=settings.steps, initial=start, desc=label, unit="step", file=sys.stderr, dynamic_ncols=True)

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        done = step + 1
        if checkpoint_every and done % checkpoint_every == 0 and done < settings.steps:
            save_checkpoint(state_file, trained, optimizer, generator, done, losses, identity)

    try:   # distill draws every random number from the generator we hand it: its state is the run's
        distill(prior, field, prompt, settings, seed=seed, on_step=on_step, start_step=start, optimizer=optimizer,
                generator=generator, particle=particle)
    finally:
        bar.close()
    return field, losses


def sds(cfg: DictConfig) -> int:
    prompts = read_prompts(cfg)
    settings = distill_settings(cfg.sds, cfg.steps)
    kind, prior_path = prior_source(cfg)
    if kind == "pretrained" and settings.distillation == "vsd":
        raise ConfigError("sds.distillation=vsd needs an mldm prior (run_dir=RUN): a copy of a Stable Diffusion "
                          "UNet is too large for it here, and its LoRA is not built")
    default_parent = prior_path / "sds" if kind == "run_dir" else Path("outputs") / "sds"
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_parent / time.strftime("cli-%Y%m%d-%H%M%S")
    state_dir = out_dir.absolute().parent / f".{out_dir.name}.sds_state"
    device = resolve_device(cfg.device)
    spec = field_spec(cfg)
    common = {"prior": str(prior_path.resolve()), "field": spec, "settings": asdict(settings)}
    run = canonical({**common, "mesh_resolution": cfg.mesh_resolution, "mesh_method": cfg.mesh_method,
                     "turntable_frames": cfg.turntable_frames})
    start = time.perf_counter()
    with writing_to(cfg, out_dir, "sds"):
        before = finished(out_dir, run)
        if not before and (out_dir / MARKER_FILE).is_file():
            print(f"mldm sds: note: {out_dir} holds an sds run with other settings (or prior, or field): its "
                  f"prompts are distilled again", file=sys.stderr)
        done, prior, distilled = [], None, 0
        for index, prompt in enumerate(prompts):
            stem, seed = stem_of(index), cfg.seed + index
            record = before.get(stem)
            if record is not None and record.get("prompt") == prompt and record.get("seed") == seed:
                done.append((record, out_dir))
                continue
            if prior is None:
                prior = load_any_prior(kind, prior_path, device)
            identity = {**common, "prompt": prompt, "seed": seed}
            field, losses = distill_prompt(prior, prompt, seed, settings, spec, state_dir / f"{stem}.safetensors",
                                           cfg.checkpoint_every, device, identity, f"{stem} {prompt!r}")
            meta = {"prompt": prompt, "seed": seed, "step": settings.steps, "field": spec,
                    "settings": asdict(settings), "prior": common["prior"]}
            record = export_prompt(state_dir / stem, stem, field, losses, meta, settings, cfg.mesh_resolution,
                                   cfg.turntable_frames, device, cfg.mesh_method)
            done.append((record, state_dir / stem))
            write_outputs(out_dir, done, run)
            done[-1] = (record, out_dir)              # its files now live in out_dir
            (state_dir / f"{stem}.safetensors").unlink(missing_ok=True)
            shutil.rmtree(state_dir / stem, ignore_errors=True)
            distilled += 1
        if not distilled and set(before) != {record["stem"] for record, _ in done}:
            write_outputs(out_dir, done, run)         # fewer prompts than last time: drop the others' files
        shutil.rmtree(state_dir, ignore_errors=True)  # every prompt is done: nothing left to resume
    print(f"mldm sds: {len(prompts)} prompt(s), {distilled} distilled, {len(prompts) - distilled} already done, "
          f"in {time.perf_counter() - start:.1f} s -> {out_dir}")
    return 0
