"""The training engine end to end through `mldm train`: exact resume after a real kill, the NaN guard,
DDP equivalence, config errors; and the loop's parts."""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shared.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.training.ema import EMA
from shared.training.loop import data_order
from shared.training.randomness import BatchRandomness

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent

TOY_MODALITY = """stages:
  diffusion:
    build:
      _target_: toy_task.ToyTask
      _partial_: true
      nan_at_step: -1
      step_delay: 0.0
      dropout: 0.1
      nan_every: 0
"""
TOY_EXPERIMENT = """# @package _global_
defaults:
  - override /modality: toy
device: cpu
stages:
  diffusion: {max_steps: 40, batch_size: 64, checkpoint_every: 10, log_every: 5, lr: 3.0e-3}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    configs = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(REPO / "configs", configs)
    (configs / "modality" / "toy.yaml").write_text(TOY_MODALITY)
    (configs / "experiment" / "toy.yaml").write_text(TOY_EXPERIMENT)
    return {**os.environ, "MLDM_CONFIG_DIR": str(configs), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])}


def mldm(env, *args, **kwargs):
    return [sys.executable, "-m", "shared.cli", *args]


def run(env, *args, timeout=300):
    return subprocess.run(mldm(env, *args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def final_tensors(run_dir: Path, stage="diffusion"):
    newest = sorted((run_dir / "checkpoints" / stage).glob("step_*.safetensors"))[-1]
    return newest, load_file(str(newest))


def test_kill_and_resume_is_bit_identical(env, tmp_path):
    reference = tmp_path / "reference"
    done = run(env, "train", "experiment=toy", f"run_dir={reference}")
    assert done.returncode == 0, done.stderr

    interrupted = tmp_path / "interrupted"
    slow = ["modality.stages.diffusion.build.step_delay=0.05"]  # slow enough that the kill lands mid-run
    proc = subprocess.Popen(mldm(env, "train", "experiment=toy", f"run_dir={interrupted}", *slow), env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = interrupted / "checkpoints" / "diffusion" / "step_00000020.json"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run must really be killed mid-training: {stderr}"
    assert not (interrupted / "checkpoints" / "diffusion" / "step_00000040.json").exists()

    resumed = run(env, "train", f"run_dir={interrupted}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    (ref_path, ref), (res_path, res) = final_tensors(reference), final_tensors(interrupted)
    assert ref_path.name == res_path.name == "step_00000040.safetensors"
    assert ref.keys() == res.keys() and any(k.startswith("optim.") for k in ref)
    for key in ref:
        assert torch.equal(ref[key], res[key]), f"{key} differs after kill + resume"


def test_nan_guard_stops_keeps_last_good_checkpoint(env, tmp_path):
    out = run(env, "train", "experiment=toy", f"run_dir={tmp_path}", "modality.stages.diffusion.build.nan_at_step=25")
    assert out.returncode == 3
    assert "non-finite main at step 25" in out.stderr and "step_00000020.json" in out.stderr
    kept = sorted((tmp_path / "checkpoints" / "diffusion").glob("step_*.json"))
    assert kept[-1].name == "step_00000020.json"
    tensors, _ = load_checkpoint(kept[-1])
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_nan_in_the_data_is_blamed_on_the_data_not_the_learning_rate(env, tmp_path):
    run_dir = tmp_path / "run"
    out = run(env, "train", "experiment=toy", f"run_dir={run_dir}", "modality.stages.diffusion.build.nan_every=16")
    assert out.returncode == 2, out.stderr
    error = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "the training data holds NaN/inf: batch['x'] of the batch at step 0 (dataset items" \
        in error[0] and "trainer.lr" not in out.stderr, out.stderr
    assert not run_dir.exists(), "a start that failed before any checkpoint leaves no run directory"


def test_config_errors_name_the_key(env, tmp_path):
    out = run(env, "train", "experiment=toy", f"run_dir={tmp_path / 'a'}", "stages.diffusion.max_stepz=3")
    assert out.returncode == 2 and "max_stepz" in out.stderr
    out = run(env, "train", "experiment=toy", f"run_dir={tmp_path / 'b'}", "trainer.batch_size=many")
    assert out.returncode == 2 and "trainer.batch_size" in out.stderr
    out = run(env, "train", "experiment=toy", f"run_dir={tmp_path / 'c'}", "trainer.precision=fp8")
    assert out.returncode == 2 and "trainer.precision" in out.stderr


def test_ddp_two_processes_match_one_process(env, tmp_path):
    """2 processes × 32 and 1 process × 64 (the same global batch) follow the same loss curve."""
    common = ["experiment=toy", "stages.diffusion.max_steps=20", "stages.diffusion.checkpoint_every=0",
              "stages.diffusion.log_every=1", "modality.stages.diffusion.build.dropout=0.0"]
    single = run(env, "train", *common, f"run_dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "shared.cli", "train", *common, f"run_dir={tmp_path / 'ddp'}"]
    ddp = subprocess.run(torchrun, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[:3000]

    def curve(run_dir):
        with open(run_dir / "logs" / "metrics.csv") as f:
            return torch.tensor([float(row["loss"]) for row in csv.DictReader(f)])

    torch.testing.assert_close(curve(tmp_path / "ddp"), curve(tmp_path / "single"), rtol=1e-4, atol=1e-5)
    _, a = final_tensors(tmp_path / "single")
    _, b = final_tensors(tmp_path / "ddp")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_teardown_stops_gloo_threads_so_processes_exit_cleanly(env):
    """The cause of the two-process run's intermittent SIGABRT at exit: gloo threads outliving teardown."""
    probe = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(HERE / "gloo_teardown_probe.py")]
    done = subprocess.run(probe, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = re.findall(r"rank \d threads after teardown: \[[^\]]*\]", done.stdout)  # the two may share a line
    assert len(reports) == 2 and not any("gloo" in report for report in reports), done.stdout


def test_data_order_is_a_permutation_per_epoch_and_resumable():
    stream = data_order(seed=3, num_examples=10, start=0, count=25)
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:20].tolist()) == list(range(10))
    assert torch.equal(data_order(3, 10, 7, 11), stream[7:18])


def test_batch_randomness_is_shard_invariant():
    whole = BatchRandomness(seed=1, step=5, micro=0, rank=0, world=1).randn_like(torch.zeros(8, 3))
    halves = [BatchRandomness(seed=1, step=5, micro=0, rank=r, world=2).randn_like(torch.zeros(4, 3)) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)


def test_ema_update_and_swap():
    module = torch.nn.Linear(2, 2)
    ema = EMA({"m": module}, decay=0.9)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update(100)  # warm-up over: (1 + 100)/(10 + 100) > 0.9
    torch.testing.assert_close(ema.shadow["m.weight"], 0.9 * before["weight"] + 0.1 * module.weight)
    assert ema.decay_at(0) == 0.1 and ema.decay_at(8) == 0.5
    with ema.swapped_in():
        torch.testing.assert_close(module.weight, ema.shadow["m.weight"])
    torch.testing.assert_close(module.weight, before["weight"] + 1.0)


def test_checkpoint_round_trip_refuses_nan_and_names_a_truncated_file(tmp_path):
    save_checkpoint(tmp_path, 3, {"model.w": torch.arange(4.0)}, {"stage": "x"})
    tensors, meta = load_checkpoint(tmp_path / "step_00000003.json")
    assert torch.equal(tensors["model.w"], torch.arange(4.0)) and meta["step"] == 3
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path, 4, {"model.w": torch.tensor([float("nan")])}, {})
    path = tmp_path / "step_00000003.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="step_00000003.safetensors"):
        load_checkpoint(tmp_path / "step_00000003.json")


def test_accumulation_and_bf16_autocast_train(env, tmp_path):
    """grad_accum=2 under bf16 autocast (fp32 master weights): completes, loss falls, weights stay fp32."""
    out = run(env, "train", "experiment=toy", f"run_dir={tmp_path}", "trainer.grad_accum=2", "trainer.precision=bf16",
              "stages.diffusion.max_steps=60", "stages.diffusion.log_every=10")
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "logs" / "metrics.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert losses[-1] < losses[0]
    _, tensors = final_tensors(tmp_path)
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if k.startswith("model."))
