"""Stages declared as data: the declarations are checked, the experiment may only name declared stages, a
stage's frozen inputs must have finished, and ``init_from`` starts a stage from another one's weights."""
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from shared.cli.config import upgrade_task_factory
from shared.training.checkpoint import save_checkpoint
from shared.training.loop import TrainingConfigError
from shared.training.stage_spec import (build_stage, check_frozen_inputs, declared_stages, initialise_from,
                                        planned_stages)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_task import ToyTask  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TOY = {"_target_": "toy_task.ToyTask", "_partial_": True, "num_examples": 8}


def config(stages: dict, experiment: dict) -> OmegaConf:
    return OmegaConf.create({"modality": {"stages": stages}, "stages": experiment})


def test_plan_follows_the_experiment_and_keeps_positions_of_dropped_stages():
    cfg = config({"first": {"build": TOY}, "second": {"build": TOY, "frozen": ["first"]}},
                 {"first": None, "second": {"max_steps": 3}})
    plan = planned_stages(cfg)
    assert [(index, spec.name, spec.frozen) for index, spec, _ in plan] == [(1, "second", ("first",))]


@pytest.mark.parametrize("stages, experiment, named", [
    ({"a": {"build": TOY, "frozn": ["b"]}}, {"a": {}}, "modality.stages.a.frozn"),
    ({"a": {"build": TOY, "frozen": ["b"]}}, {"a": {}}, "modality.stages.a.frozen: 'b'"),
    ({"a": {"build": TOY, "init_from": "c"}}, {"a": {}}, "modality.stages.a.init_from: 'c'"),
    ({"a": {"frozen": []}}, {"a": {}}, "modality.stages.a.build"),
    ({"a": {"build": TOY}}, {"b": {}}, "stages.b: the modality declares no stage 'b' (it declares: a)"),
])
def test_bad_declarations_are_named(stages, experiment, named):
    with pytest.raises(TrainingConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        planned_stages(config(stages, experiment))


def write_stage(run_dir: Path, stage: str, task: ToyTask, complete: bool = True, source: str = "ema"):
    tensors = {f"{source}.{name}.{key}": value for name, module in task.modules().items()
               for key, value in module.state_dict().items()}
    save_checkpoint(run_dir / "checkpoints" / stage, 10, tensors, {"stage": stage, "complete": complete})


def test_a_stage_refuses_to_build_before_its_frozen_inputs_finished(tmp_path):
    spec = declared_stages(config({"a": {"build": TOY}, "b": {"build": TOY, "frozen": ["a"]}}, {}))["b"]
    with pytest.raises(TrainingConfigError, match="uses stage 'a' frozen.*train it first"):
        check_frozen_inputs(spec, tmp_path)
    write_stage(tmp_path, "a", ToyTask(num_examples=8), complete=False)  # interrupted: not enough
    with pytest.raises(TrainingConfigError, match="no finished checkpoint"):
        build_stage(spec, None, tmp_path, "cpu")
    write_stage(tmp_path, "a", ToyTask(num_examples=8))
    assert build_stage(spec, None, tmp_path, "cpu").name == "b"  # the name comes from the declaration


def test_init_from_copies_the_source_weights_and_lists_new_ones(tmp_path, capsys):
    source = ToyTask(num_examples=8)
    with torch.no_grad():
        for p in source.denoiser.parameters():
            p.add_(1.0)
    write_stage(tmp_path, "pretrain", source)
    spec = declared_stages(config({"pretrain": {"build": TOY}, "finetune": {"build": TOY, "init_from": "pretrain"}},
                                  {}))["finetune"]
    target = ToyTask(num_examples=8)
    target.denoiser.extra = torch.nn.Linear(2, 2)  # a layer the fine-tuning stage adds
    initialise_from(target, spec, tmp_path)
    for key, value in source.denoiser.state_dict().items():
        assert torch.equal(target.denoiser.state_dict()[key], value), key
    assert "initialised denoiser (2 tensors new) from stage 'pretrain'" in capsys.readouterr().err

    resumed = ToyTask(num_examples=8)  # once the stage has its own checkpoint, resume wins
    write_stage(tmp_path, "finetune", resumed, complete=False, source="model")
    before = {k: v.clone() for k, v in resumed.denoiser.state_dict().items()}
    initialise_from(resumed, spec, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in resumed.denoiser.state_dict().items())


def test_init_from_refuses_weights_the_module_cannot_hold(tmp_path):
    source = ToyTask(num_examples=8)
    source.denoiser.extra = torch.nn.Linear(2, 2)
    write_stage(tmp_path, "pretrain", source)
    spec = declared_stages(config({"pretrain": {"build": TOY}, "finetune": {"build": TOY, "init_from": "pretrain"}},
                                  {}))["finetune"]
    with pytest.raises(TrainingConfigError, match="has weights the stage 'finetune' module lacks"):
        initialise_from(ToyTask(num_examples=8), spec, tmp_path)


def test_old_run_directories_get_todays_stage_declarations():
    old = {"task": {"_target_": "modalities.molecule.task.build_task", "_partial_": True}, "cfg_dropout": 0.1}
    upgraded = upgrade_task_factory(old, REPO / "configs")
    assert "task" not in upgraded and upgraded["cfg_dropout"] == 0.1
    assert upgraded["stages"]["diffusion"]["frozen"] == ["autoencoder"]
    assert declared_stages(OmegaConf.create({"modality": upgraded})).keys() == {"autoencoder", "diffusion"}
