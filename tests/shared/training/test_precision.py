"""trainer.precision=auto: bf16 autocast exactly where the device multiplies bf16 natively, else fp32."""
import pytest
import torch

from shared.training import precision
from shared.training.loop import Trainer, TrainerSettings
from toy_task import ToyTask


def test_explicit_precisions_pass_and_unknown_ones_are_named():
    cpu = torch.device("cpu")
    assert precision.resolve_precision("fp32", cpu) == "fp32" and precision.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="trainer.precision='fp16'"):
        precision.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert precision.resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")


def test_cpu_probe_reads_the_instruction_sets(monkeypatch):
    """AVX512-BF16 or AMX makes a CPU native; neither (e.g. AVX2 alone) does not."""
    monkeypatch.setattr(precision, "kernels_use_bf16_instructions", lambda: True)
    for avx512_bf16, amx, expected in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        assert precision.native_bf16(torch.device("cpu")) is expected


def test_kernels_held_to_avx2_are_not_native(monkeypatch):
    """A bf16 CPU whose torch may use only AVX2 kernels emulates bf16: auto must pick fp32 there."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not precision.kernels_use_bf16_instructions()
    assert precision.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert precision.resolve_precision("auto", torch.device("cpu")) == "fp32"  # ONEDNN_MAX_CPU_ISA=AVX2


@pytest.mark.parametrize("native", [True, False])
def test_trainer_under_auto_autocasts_only_on_native_hardware(monkeypatch, tmp_path, capsys, native):
    """The network's activations are bf16 inside the step exactly when auto resolves to bf16; the choice is printed."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    task = ToyTask(dropout=0.0)
    seen = []
    task.denoiser.backbone.net[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    settings = TrainerSettings(max_steps=1, batch_size=8, optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
                               precision="auto", checkpoint_every=0)
    trainer = Trainer(task, settings, seed=0, checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "l",
                      samples_dir=tmp_path / "s", device=torch.device("cpu"))
    trainer.train_step()
    assert seen == [torch.bfloat16 if native else torch.float32]
    assert f"trainer.precision=auto -> {'bf16' if native else 'fp32'} on cpu" in capsys.readouterr().err
