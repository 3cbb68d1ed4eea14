"""`mldm` CLI: help, closed keys, types, --show-config, run directories, run-config precedence.

Engines are swapped for a recorder through the dispatch table; modality-dependent flows use a copy of
the config tree with a fake modality and preset, selected with MLDM_CONFIG_DIR.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from shared.cli import main as cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CALLS: list = []


def record(cfg):
    CALLS.append(cfg)


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    """configs/ plus modality/fake.yaml and experiment/fake_tiny.yaml."""
    root = tmp_path_factory.mktemp("tree") / "configs"
    shutil.copytree(CONFIGS, root)
    (root / "modality" / "fake.yaml").write_text("name: fake\nchannels: 3\n")
    (root / "experiment" / "fake_tiny.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /modality: fake\n  - override /sampler: euler\n"
        "trainer:\n  max_steps: 3\nstages:\n  diffusion: {max_steps: 3}\n")
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    CALLS.clear()
    return tmp_path


@pytest.fixture
def fake(workdir, fake_tree, monkeypatch):
    """A working directory, the fake config tree and recording engines."""
    monkeypatch.setenv("MLDM_CONFIG_DIR", str(fake_tree))
    monkeypatch.setattr(cli, "ENGINES", {c: f"{__name__}:record" for c in cli.ENGINES})
    return workdir


def error_line(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sample", "evaluate", "--show-config"):
        assert command in out


def test_command_help_lists_keys_and_groups(capsys):
    assert cli.main(["sample", "--help"]) == 0
    out = capsys.readouterr().out
    assert "num_samples" in out and "guidance_scale" in out and "dpmpp_2m" in out and "--show-config" in out


def test_console_script_help():
    script = Path(sys.executable).with_name("mldm")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "shared.cli"]
    done = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and "evaluate" in done.stdout


def test_unknown_command(capsys):
    assert "unknown command 'fit'" in error_line(capsys, ["fit"])


@pytest.mark.parametrize("override,key", [("nope=1", "nope"), ("trainer.lrr=0.1", "trainer.lrr"),
                                          ("sampler.eta=0.5", "sampler.eta")])
def test_unknown_key_fails_naming_it(capsys, override, key):
    err = error_line(capsys, ["train", override])
    assert f"'{key}'" in err and "+key=value" in err


def test_adding_keys_and_sweeps_are_refused(capsys):
    assert "+key=value is not allowed" in error_line(capsys, ["train", "+nope=1"])
    assert "sweeps are not supported" in error_line(capsys, ["train", "seed=1,2"])


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().err


@pytest.mark.parametrize("command,override,message", [
    ("train", "seed=abc", "seed: expected int, got 'abc'"),
    ("train", "resume=maybe", "resume: expected bool"),
    ("train", "trainer.precision=fp16", "trainer.precision: expected one of bf16|fp32|auto"),
    ("sample", "guidance_scale=high", "guidance_scale: expected float or null"),
    ("evaluate", "source=web", "source: expected one of samples|data"),
])
def test_wrong_type_fails_naming_the_key(capsys, command, override, message):
    assert message in error_line(capsys, [command, override])


@pytest.mark.parametrize("command,override,message", [
    ("sample", "num_samples=0", "num_samples=0: must be >= 1"),
    ("sample", "strength=1.5", "strength=1.5: must be in [0, 1]"),
    ("sample", "guidance_scale=inf", "guidance_scale=inf: must be finite"),
    ("train", "trainer.lr=-1", "trainer.lr=-1.0: must be > 0 and finite"),
    ("train", "trainer.grad_accum=0", "trainer.grad_accum=0: must be >= 1"),
])
def test_out_of_range_values_fail_naming_the_key(capsys, command, override, message):
    assert message in error_line(capsys, [command, override])


def test_stage_overrides_are_typed_and_range_checked_before_anything_trains(capsys, fake_tree, monkeypatch):
    monkeypatch.setenv("MLDM_CONFIG_DIR", str(fake_tree))
    base = ["train", "experiment=fake_tiny", "--show-config"]
    assert "stages.diffusion.max_steps: expected int, got 'many'" in error_line(
        capsys, base + ["stages.diffusion.max_steps=many"])
    assert "stages.diffusion.batch_size=-3: must be >= 1" in error_line(capsys, base + ["stages.diffusion.batch_size=-3"])
    assert "unknown key 'stages.diffusion.lrr'" in error_line(capsys, base + ["stages.diffusion.lrr=1"])


def _raises_wrapped_user_error(cfg):
    from hydra.errors import InstantiationException

    from shared.errors import DataError
    try:
        raise DataError("data/cat.png: cannot read image (truncated)")
    except DataError as error:
        raise InstantiationException("Error in call to target 'x.build':\nfull_key: modality") from error


def _raises_a_bug(cfg):
    return None.missing


@pytest.mark.parametrize("engine,code,expected", [
    (_raises_wrapped_user_error, 2, "mldm sample: error: data/cat.png: cannot read image (truncated)"),
    (_raises_a_bug, 1, "mldm sample: internal error: AttributeError: 'NoneType' object has no attribute 'missing' "
                       "(a bug in mldm; rerun with --debug"),
])
def test_errors_are_one_line_and_debug_shows_the_traceback(capsys, fake, monkeypatch, engine, code, expected):
    monkeypatch.setitem(globals(), "record", engine)
    argv = ["sample", "experiment=fake_tiny"]
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(expected), err
    with pytest.raises(Exception):
        cli.main(argv + ["--debug"])
    monkeypatch.setenv("MLDM_DEBUG", "1")
    with pytest.raises(Exception):
        cli.main(argv)


def test_unknown_option_lists_available(capsys):
    err = error_line(capsys, ["train", "schedule=nope"])
    assert "schedule/nope" in err and "cosine" in err


def test_show_config_prints_overrides(capsys, workdir):
    argv = ["train", "seed=7", "trainer.lr=3e-4", "sampler=ddim", "sampler.eta=0.5", "--show-config"]
    assert cli.main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["seed"] == 7 and shown["trainer"]["lr"] == 3e-4
    assert shown["sampler"] == {"_target_": "shared.diffusion.samplers.sample_ddim", "_partial_": True, "eta": 0.5}
    assert not (workdir / "runs").exists()


def test_guidance_scale_needs_a_scaled_guidance(capsys):
    assert "guidance=cfg" in error_line(capsys, ["sample", "guidance_scale=3"])


def test_train_without_modality_creates_nothing(capsys, workdir):
    err = error_line(capsys, ["train", "run_dir=out"])
    assert "no modality selected: choose experiment=<preset> (available:" in err
    assert list(workdir.iterdir()) == []


def test_missing_engine_is_a_clear_error(capsys, fake, monkeypatch):
    monkeypatch.setitem(cli.ENGINES, "train", "shared.no_such_engine:train")
    err = error_line(capsys, ["train", "experiment=fake_tiny"])
    assert "shared.no_such_engine" in err and "Traceback" not in err
    assert list(fake.iterdir()) == []


def test_modality_message_lists_presets(capsys, fake):
    assert "fake_tiny" in error_line(capsys, ["train"])


def test_train_writes_the_run_directory(fake):
    assert cli.main(["train", "experiment=fake_tiny", "seed=3"]) == 0
    (run_dir,) = (fake / "runs").iterdir()
    assert {p.name for p in run_dir.iterdir()} == {"checkpoints", "logs", "samples", "config.yaml", ".mldm.lock"}
    (cfg,) = CALLS
    assert cfg.run_dir == str(Path("runs") / run_dir.name) and cfg.seed == 3 and cfg.modality.name == "fake"
    assert OmegaConf.load(run_dir / "config.yaml") == cfg


def test_existing_run_needs_resume(fake, capsys):
    assert cli.main(["train", "experiment=fake_tiny", "run_dir=r"]) == 0
    assert "resume=true" in error_line(capsys, ["train", "experiment=fake_tiny", "run_dir=r"])
    assert cli.main(["train", "run_dir=r", "resume=true", "trainer.max_steps=10"]) == 0
    resumed = CALLS[-1]
    assert resumed.modality.name == "fake" and resumed.trainer.max_steps == 10
    assert OmegaConf.load(fake / "r" / "config.yaml").trainer.max_steps == 10


def test_sample_uses_the_run_config(fake, capsys):
    assert cli.main(["train", "experiment=fake_tiny", "run_dir=r", "seed=5", "trainer.lr=0.5"]) == 0
    # the run's sampler is euler (from the preset): its keys are editable, and sample defaults fill in
    assert cli.main(["sample", "run_dir=r", "num_samples=4", "sampler.churn=1.5"]) == 0
    cfg = CALLS[-1]
    assert cfg.run_dir == "r" and cfg.num_samples == 4 and cfg.steps == 20 and cfg.out_dir is None
    assert cfg.seed == 5 and cfg.trainer.lr == 0.5 and cfg.modality.name == "fake"
    assert cfg.sampler == {"_target_": "shared.diffusion.samplers.sample_euler", "_partial_": True, "churn": 1.5}
    # a group switch replaces the run's node whole
    assert cli.main(["sample", "run_dir=r", "sampler=ddim", "guidance=cfg", "guidance_scale=2"]) == 0
    cfg = CALLS[-1]
    assert cfg.sampler == {"_target_": "shared.diffusion.samplers.sample_ddim", "_partial_": True, "eta": 0.0}
    assert cfg.guidance.scale == 2.0
    assert "cannot be combined with a run_dir" in error_line(capsys, ["sample", "run_dir=r", "experiment=fake_tiny"])
    assert "no config.yaml" in error_line(capsys, ["evaluate", "run_dir=missing"])


def test_evaluate_data_from_a_preset(fake):
    assert cli.main(["evaluate", "experiment=fake_tiny", "source=data", "split=val"]) == 0
    cfg = CALLS[-1]
    assert cfg.source == "data" and cfg.split == "val" and cfg.modality.name == "fake"
    assert not (fake / "runs").exists()


@pytest.mark.parametrize("text,message", [("a: [1\n", "config.yaml: unreadable (ParserError"),
                                          ("- 1\n", "config.yaml: not a mapping of config keys")])
def test_a_damaged_run_config_is_named(capsys, tmp_path, text, message):
    (tmp_path / "config.yaml").write_text(text)
    assert message in error_line(capsys, ["sample", f"run_dir={tmp_path}"])
