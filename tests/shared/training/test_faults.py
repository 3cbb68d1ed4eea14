"""The fault suite: a tiny two-stage run killed with SIGKILL at ten points (inside a step, inside a checkpoint
write, between the weights and their JSON, between stages) and resumed to the end each time ends bit-identical
to an uninterrupted run, with the same logs; a full disk during a checkpoint write leaves the previous
checkpoint intact and readable."""
import csv
import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import shared.training.checkpoint as checkpoint
from shared.errors import CheckpointError

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent

TWO_STAGE_TOY = """stages:
  diffusion:
    build: {_target_: toy_task.ToyTask, _partial_: true}
  refine:
    build: {_target_: toy_task.ToyTask, _partial_: true}
    init_from: diffusion
"""
EXPERIMENT = """# @package _global_
defaults:
  - override /modality: toy2
device: cpu
stages:
  diffusion: {max_steps: 12, batch_size: 32, checkpoint_every: 4, log_every: 2, lr: 3.0e-3}
  refine: {max_steps: 8, batch_size: 32, checkpoint_every: 4, log_every: 2, lr: 1.0e-3}
"""
STAGES = ("diffusion", "refine")


def kill_points(count=10, seed=22):
    """Every kind of point once, the rest drawn at random (seeded: the same ten on every machine)."""
    every = ([f"step:{n}" for n in range(1, 21)] + [f"checkpoint:{n}" for n in range(1, 6)]
             + [f"checkpoint_json:{n}" for n in range(1, 6)] + ["stage_end:1"])
    rng = random.Random(seed)
    chosen = ["stage_end:1", f"checkpoint:{rng.randint(1, 5)}", f"checkpoint_json:{rng.randint(1, 5)}",
              f"step:{rng.randint(1, 20)}"]
    return chosen + rng.sample([p for p in every if p not in chosen], count - len(chosen))


def drive(tmp_path, runs):
    env = {**os.environ, "MLDM_CONFIG_DIR": str(tmp_path / "configs"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(runs))
    done = subprocess.run([sys.executable, str(HERE / "fault_driver.py"), str(plan)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def final_state(run_dir):
    return {stage: load_file(str(sorted((run_dir / "checkpoints" / stage).glob("step_*.safetensors"))[-1]))
            for stage in STAGES}


def logged_rows(run_dir):
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "it_per_s"} for row in csv.DictReader(f)]


def test_kill_minus_nine_at_ten_points_then_resume_is_bit_identical(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "modality" / "toy2.yaml").write_text(TWO_STAGE_TOY)
    (tmp_path / "configs" / "experiment" / "toy2.yaml").write_text(EXPERIMENT)
    points = kill_points()
    runs = [{"argv": ["train", "experiment=toy2", f"run_dir={tmp_path / 'reference'}"], "log": str(tmp_path / "ref.log")}]
    for i, point in enumerate(points):
        run_dir = tmp_path / f"killed{i}"
        runs.append({"argv": ["train", "experiment=toy2", f"run_dir={run_dir}"], "fault": point,
                     "log": str(tmp_path / f"kill{i}.log")})
        runs.append({"argv": ["train", f"run_dir={run_dir}", "resume=true"], "log": str(tmp_path / f"resume{i}.log")})
    outcomes = drive(tmp_path, runs)
    assert outcomes[0] == "exit 0", (tmp_path / "ref.log").read_text()
    reference, reference_rows = final_state(tmp_path / "reference"), logged_rows(tmp_path / "reference")
    for i, point in enumerate(points):
        killed, resumed = outcomes[1 + 2 * i], outcomes[2 + 2 * i]
        resume_log = (tmp_path / f"resume{i}.log").read_text()
        assert killed == "signal 9", f"{point}: the run must really be killed there ({killed})"
        assert resumed == "exit 0", f"{point}: {resume_log}"
        assert "ended without releasing it" in resume_log, f"{point}: the stale lock goes unreported"
        state = final_state(tmp_path / f"killed{i}")
        for stage in STAGES:
            assert state[stage].keys() == reference[stage].keys()
            for key in reference[stage]:
                assert torch.equal(state[stage][key], reference[stage][key]), f"{point}: {stage} {key} differs"
        assert logged_rows(tmp_path / f"killed{i}") == reference_rows, f"{point}: the logs differ (a step twice?)"
        assert not list((tmp_path / f"killed{i}").rglob(".step_*.tmp")), f"{point}: a half-written file was left"


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(tmp_path, 4, {"model.w": torch.arange(4.0)}, {"stage": "x"})

    def disk_fills_up(tensors, temporary):
        Path(temporary).write_bytes(b"\0" * 100)  # part of the file made it to disk, then the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary))

    monkeypatch.setattr(checkpoint, "_write_weights", disk_fills_up)
    with pytest.raises(CheckpointError, match=r"step_00000008: could not write the checkpoint of step 8 "
                                              r"\(No space left on device\); the previous checkpoints are intact"):
        checkpoint.save_checkpoint(tmp_path, 8, {"model.w": torch.ones(4)}, {"stage": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004.json", "step_00000004.safetensors"]
    newest = checkpoint.latest_checkpoint(tmp_path)
    assert newest.name == "step_00000004.json"
    assert torch.equal(checkpoint.load_checkpoint(newest)[0]["model.w"], torch.arange(4.0))
