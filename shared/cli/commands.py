"""`mldm sample` and `mldm evaluate`: the modality's pipeline does the work, this module the contract.

A modality config provides ``pipeline`` (a partial called with cfg, run_dir, device) returning an
object with ``sample(num_samples, prompt, seed) -> result``, ``export(result, out_dir)``,
``evaluate_samples(out_dir) -> dict``, ``evaluate_data(split, num_samples) -> dict`` and
``nll_terms(split, num_samples)`` (``shared.contract.SamplingPipeline``), and lists the
sampling options it implements in ``sampling_options`` (of ``SAMPLING_OPTIONS``).
The sampler, its steps and the guidance come from the config (``sampler=``, ``steps=``, ``guidance_scale=``).
Output goes through the one sample-directory writer (``shared.io.sample_dir``: nothing of a user's is
overwritten without ``overwrite=true``); a command writing into its run directory holds the run's lock.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from shared.errors import ConfigError
from shared.generation.likelihood import prior_nll
from shared.io.run_lock import RunLock
from shared.io.sample_dir import add_to_sample_dir, check_writable, overwriting
from shared.training.run import resolve_device


def build_pipeline(cfg: DictConfig, with_model: bool = True):
    """The modality's pipeline; ``with_model=False`` skips loading weights (judging data or a sample dir)."""
    if cfg.run_dir is None and with_model:
        raise ConfigError("run_dir=DIR is required (a training run directory)")
    run_dir = Path(cfg.run_dir) if cfg.run_dir and with_model else None
    return instantiate(cfg.modality.pipeline)(cfg=cfg, run_dir=run_dir, device=resolve_device(cfg.get("device", "auto")))


@contextmanager
def writing_to(cfg: DictConfig, out_dir: Path, command: str):
    """Held while ``command`` writes ``out_dir``: the run's lock when out_dir lies inside the run, and the
    ``overwrite`` policy. ``out_dir`` is checked before any work, so a refusal costs no sampling."""
    run_dir = Path(cfg.run_dir).absolute() if cfg.get("run_dir") else None
    inside = run_dir is not None and out_dir.absolute().is_relative_to(run_dir)
    with overwriting(bool(cfg.get("overwrite"))):
        check_writable(out_dir)
        with RunLock(run_dir, command) if inside else nullcontext():
            yield


SAMPLING_OPTIONS = ("partial", "init", "strength", "mask", "first_frame", "num_frames", "context_frames")


def check_sampling_options(cfg: DictConfig, pipeline) -> None:
    """A sampling option the modality does not implement is an error, never silently ignored; a pipeline
    lists the ones it implements in ``sampling_options``."""
    supported = getattr(pipeline, "sampling_options", ())
    for option in SAMPLING_OPTIONS:
        if cfg.get(option) is not None and option not in supported:
            offered = ", ".join(f"{o}=" for o in supported) or "none"
            raise ValueError(f"{option}={cfg.get(option)}: this modality's sampling does not take {option}= "
                             f"(it takes: {offered})")


def sample(cfg: DictConfig) -> int:
    pipeline = build_pipeline(cfg)
    check_sampling_options(cfg, pipeline)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.run_dir) / "samples" / time.strftime("cli-%Y%m%d-%H%M%S")
    start = time.perf_counter()
    with writing_to(cfg, out_dir, "sample"):
        result = pipeline.sample(cfg.num_samples, prompt=cfg.prompt, seed=cfg.seed)
        pipeline.export(result, out_dir)
    print(f"mldm sample: {cfg.num_samples} samples in {time.perf_counter() - start:.1f} s -> {out_dir}")
    return 0


# Sample directories that say how they are judged: a marker file there -> its judge (samples_dir -> metrics).
# They need no modality config: `mldm evaluate samples_dir=DIR` alone judges them.
MARKED_JUDGES = {"sds.json": "modalities.text_to_3d.mesh_judge:evaluate_samples"}   # `mldm sds` output


def marked_judge(cfg: DictConfig) -> str | None:
    """The judge ("module:function") of ``samples_dir`` when it holds a marker of MARKED_JUDGES, else None."""
    samples_dir = cfg.get("samples_dir")
    if not samples_dir or cfg.get("source") == "data" or cfg.get("nll"):
        return None
    return next((judge for marker, judge in MARKED_JUDGES.items() if (Path(samples_dir) / marker).is_file()), None)


def evaluate(cfg: DictConfig) -> int:
    judge_only = cfg.source == "data" or bool(cfg.get("samples_dir"))
    if cfg.get("nll") and judge_only:
        raise ValueError("nll=true scores held-out data under a trained model: give run_dir=DIR, "
                         "not source=data or samples_dir=")
    marked = marked_judge(cfg)
    if marked:
        module, function = marked.split(":")
        judge = getattr(importlib.import_module(module), function)
    pipeline = None if marked else build_pipeline(cfg, with_model=not judge_only)
    if cfg.out_dir:
        out_dir = Path(cfg.out_dir)
    elif cfg.source == "data" and not cfg.get("nll"):
        out_dir = Path("outputs") / "evaluate_data"
    else:
        out_dir = Path(cfg.samples_dir) if cfg.get("samples_dir") else Path(cfg.run_dir) / "evaluation"
    start = time.perf_counter()
    with writing_to(cfg, out_dir, "evaluate"):
        if cfg.get("nll"):
            metrics = prior_nll(pipeline.nll_terms(cfg.split, cfg.num_samples), cfg.nll_steps, cfg.seed)
        elif cfg.source == "data":
            metrics = pipeline.evaluate_data(cfg.split, cfg.num_samples)
        elif marked:
            metrics = judge(Path(cfg.samples_dir))
        elif cfg.get("samples_dir"):
            metrics = pipeline.evaluate_samples(Path(cfg.samples_dir))
        else:
            pipeline.export(pipeline.sample(cfg.num_samples, prompt=cfg.get("prompt"), seed=cfg.seed), out_dir)
            metrics = pipeline.evaluate_samples(out_dir)
        metrics = {**metrics, "seconds": round(time.perf_counter() - start, 2)}
        add_to_sample_dir(out_dir, "metrics.json", json.dumps(metrics, indent=1))
    sys.stdout.write(json.dumps(metrics) + "\n")
    return 0
