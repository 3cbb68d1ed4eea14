"""`mldm sds` end to end on a tiny image prior: the files and samples.jsonl, resume after a kill (bit for bit),
prompts_file, the errors, `mldm evaluate samples_dir=` with the mesh judge, and configs/sds.yaml vs DistillSettings."""
import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
import trimesh
from omegaconf import OmegaConf

from modalities.text_to_3d import command
from modalities.text_to_3d.distill import DistillSettings, distill as real_distill, load_prior
from modalities.text_to_3d.export import load_field
from modalities.text_to_3d.fields import VoxelField
from modalities.text_to_3d.mesh_judge import evaluate_samples
from modalities.text_to_3d.sds_output import export_prompt, write_outputs
from shared.io.sample_dir import read_index

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
PRIOR = ["experiment=text3d_prior_tiny", "data.num_samples=16", "data.cache_dir=null", "device=cpu",
         "trainer.precision=fp32", "trainer.sample_every=0", "trainer.log_every=1", "backbone.width=32",
         "backbone.depth=1", "stages.autoencoder.max_steps=2", "stages.autoencoder.batch_size=4",
         "stages.autoencoder.checkpoint_every=0", "stages.diffusion.max_steps=2", "stages.diffusion.batch_size=4",
         "stages.diffusion.checkpoint_every=0"]
SMALL = ["steps=3", "field_resolution=16", "mesh_resolution=32", "turntable_frames=4", "device=cpu"]
FILES = ["000000.ply", "000000.obj", "000000.glb", "000000_turntable.gif", "000000_turntable.mp4",
         "000000_field.safetensors", "000000_loss.png", "samples.jsonl", "sds.json"]


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory, mldm_here):
    run = tmp_path_factory.mktemp("prior") / "run"
    out = mldm_here("train", *PRIOR, f"run_dir={run}")
    assert out.returncode == 0, out.stderr[-4000:]
    return run


@pytest.fixture(scope="module")
def sds_out(prior_run, tmp_path_factory, mldm_here):
    out_dir = tmp_path_factory.mktemp("sds") / "out"
    out = mldm_here("sds", f"run_dir={prior_run}", "prompt=a red torus", f"out_dir={out_dir}", *SMALL)
    assert out.returncode == 0, out.stderr[-4000:]
    return out_dir


def test_sds_writes_mesh_turntable_field_loss_and_index(sds_out, prior_run):
    for name in FILES:
        assert (sds_out / name).is_file(), name
    [record] = read_index(sds_out)
    assert record["file"] == "000000.ply" and record["prompt"] == "a red torus" and record["seed"] == 0
    mesh = trimesh.load(sds_out / "000000.ply", force="mesh", process=False)
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    state, meta = load_field(sds_out / "000000_field.safetensors")
    assert meta["prompt"] == "a red torus" and meta["seed"] == 0 and meta["step"] == 3
    assert meta["field"] == {"kind": "voxel", "args": {"resolution": 16, "bound": 1.25, "blob_density": 10.0,
                                                       "blob_radius": 0.5, "density_activation": "softplus",
                                                       "smoothing": 0.08}}
    assert meta["settings"]["steps"] == 3 and state["density_raw"].shape[-1] == 16
    assert not list(sds_out.parent.glob(".*sds_state")), "the resume state outlived the finished run"


def test_rerun_skips_finished_prompts(sds_out, prior_run, mldm_here):
    before = {p.name: p.stat().st_mtime_ns for p in sds_out.iterdir()}
    out = mldm_here("sds", f"run_dir={prior_run}", "prompt=a red torus", f"out_dir={sds_out}", *SMALL)
    assert out.returncode == 0 and "0 distilled, 1 already done" in out.stdout, out.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in sds_out.iterdir()} == before


def test_evaluate_judges_an_sds_directory_with_the_mesh_judge(sds_out, mldm_here):
    out = mldm_here("evaluate", f"samples_dir={sds_out}")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"n", "shape_accuracy", "color_accuracy", "prompt_accuracy", "mean_chamfer"} <= set(metrics)
    assert metrics["n"] == 1 and json.loads((sds_out / "metrics.json").read_text())["n"] == 1


def test_prompts_file_one_prompt_per_line(prior_run, tmp_path, mldm_here):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# primitives\na green cone\n\n  a blue box  \n# done\n")
    out_dir = tmp_path / "out"
    out = mldm_here("sds", f"run_dir={prior_run}", f"prompts_file={prompts}", f"out_dir={out_dir}", "seed=7",
                    "steps=2", "field_resolution=12", "mesh_resolution=24", "turntable_frames=1", "field=mlp",
                    "mesh_method=hull",
                    "sds.ray_samples=16")
    assert out.returncode == 0, out.stderr[-4000:]
    records = read_index(out_dir)
    assert [(r["prompt"], r["seed"]) for r in records] == [("a green cone", 7), ("a blue box", 8)]
    assert (out_dir / "000001_turntable.mp4").is_file()
    assert load_field(out_dir / "000001_field.safetensors")[1]["field"]["kind"] == "mlp"
    assert all(r.get("mesh_method") == "hull" for r in records if r["file"] is not None)


def test_sdf_field_end_to_end(prior_run, tmp_path, mldm_here):
    """field=sdf through the CLI: distilled, meshed (its sphere has a surface from the first step), saved with
    its pyramid, and the saved field rebuilds from its own metadata."""
    out_dir = tmp_path / "out"
    out = mldm_here("sds", f"run_dir={prior_run}", "prompt=a red sphere", f"out_dir={out_dir}", "field=sdf",
                    "steps=2", "field_resolution=12", "mesh_resolution=24", "turntable_frames=1", "sds.ray_samples=16",
                    "device=cpu")
    assert out.returncode == 0, out.stderr[-4000:]
    [record] = read_index(out_dir)
    assert record["file"] == "000000.ply"
    state, meta = load_field(out_dir / "000000_field.safetensors")
    assert meta["field"]["kind"] == "sdf" and meta["field"]["args"]["resolution"] == 12
    field = command.build_field(meta["field"])
    field.load_state_dict(state)
    assert [level.shape[-1] for level in field.sdf_levels] == [12]


@pytest.mark.parametrize("args,message", [
    (["prompt=a red box"], "give exactly one prior: run_dir=RUN"),
    (["RUN", "pretrained=elsewhere", "prompt=a red box"], "give exactly one prior"),
    (["pretrained=elsewhere", "prompt=a red box"], "pretrained=elsewhere: not a folder"),
    (["RUN", "prompt=a red box", "sds.size=0"], "sds.size=0: must be >= 1"),
    (["RUN", "prompt=a red box", "prompts_file=p.txt"], "exactly one of prompt"),
    (["RUN"], "exactly one of prompt"),
    (["RUN", "prompt=a red box", "sds.nope=1"], "unknown key 'sds.nope'"),
    (["RUN", "prompt=a red box", "sds.lr=fast"], "sds.lr='fast': expected float"),
    (["RUN", "prompt=a red box", "field=grid"], "field: expected one of voxel|mlp|sdf"),
    (["RUN", "prompt=a red box", "mesh_method=poisson"], "mesh_method: expected one of hull|level|level_hull"),
    (["RUN", "prompt=a red box", "density_activation=relu"], "density_activation: expected one of softplus|exp"),
    (["RUN", "prompt=a red box", "field_smoothing=-1"], "field_smoothing=-1.0: must be >= 0"),
    (["RUN", "prompt=a red box", "field_bound=0"], "field_bound=0.0: must be > 0"),
    (["RUN", "prompt=a red box", "sds.distillation=nerf"], "sds.distillation='nerf': expected one of sds|vsd"),
    (["pretrained=/nowhere", "prompt=a red box", "sds.distillation=vsd"], "sds.distillation=vsd needs an mldm prior"),
])
def test_errors_are_one_clear_line(prior_run, tmp_path, mldm_here, args, message):
    args = [f"run_dir={prior_run}" if a == "RUN" else a for a in args]
    out = mldm_here("sds", *args, f"out_dir={tmp_path / 'out'}")
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "out").exists()


class Killed(Exception):
    pass


def _patched_distill(monkeypatch, kill_at=None):
    """command.distill, recording each call's start_step and raising Killed after step ``kill_at``."""
    starts = []

    @functools.wraps(real_distill)
    def distill(*args, on_step, **kwargs):
        starts.append(kwargs["start_step"])

        def hook(step, loss):
            on_step(step, loss)
            if step == kill_at:
                raise Killed
        return real_distill(*args, on_step=hook, **kwargs)

    monkeypatch.setattr(command, "distill", distill)
    return starts


@pytest.mark.parametrize("distillation", ["sds", "vsd"])
def test_a_killed_run_resumes_from_its_checkpoint_bit_for_bit(prior_run, tmp_path, mldm_here, monkeypatch,
                                                              distillation):
    """VSD's checkpoint carries its copy of the prior and that copy's Adam state: the field comes out the same."""
    args = [f"run_dir={prior_run}", "prompt=a blue cone", "steps=4", "checkpoint_every=2", "field_resolution=16",
            "mesh_resolution=32", "turntable_frames=1", "sds.ambient_only_steps=1", "sds.views=2",
            f"sds.distillation={distillation}"]
    assert mldm_here("sds", *args, f"out_dir={tmp_path / 'one_go'}").returncode == 0
    _patched_distill(monkeypatch, kill_at=2)                   # dies after step 2; the checkpoint holds steps 0-1
    killed = mldm_here("sds", *args, f"out_dir={tmp_path / 'resumed'}")
    assert killed.returncode == 1 and not (tmp_path / "resumed").exists()
    assert (tmp_path / ".resumed.sds_state" / "000000.safetensors").is_file()
    starts = _patched_distill(monkeypatch)
    resumed = mldm_here("sds", *args, f"out_dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0 and starts == [2] and "resuming from step 2" in resumed.stderr, resumed.stderr
    one_go, _ = load_field(tmp_path / "one_go" / "000000_field.safetensors")
    again, _ = load_field(tmp_path / "resumed" / "000000_field.safetensors")
    assert one_go.keys() == again.keys() and all(torch.equal(one_go[k], again[k]) for k in one_go)
    assert not (tmp_path / ".resumed.sds_state").exists()


def test_the_prior_knows_the_scale_its_run_samples_with(prior_run):
    assert load_prior(prior_run, "cpu").sampling_guidance_scale == 3.0     # text3d_prior_tiny's guidance.scale


def test_the_yaml_sds_node_mirrors_distill_settings():
    node = OmegaConf.to_container(OmegaConf.load(CONFIGS / "sds.yaml").sds)
    fields = dataclasses.fields(DistillSettings)
    assert list(node) == [f.name for f in fields]
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = tuple(node[f.name]) if isinstance(default, tuple) else node[f.name]
        assert value == default and type(value) is type(default), f.name
    assert command.distill_settings(node) == DistillSettings()


@pytest.mark.parametrize("method,message", [("level", "no pixel has opacity >= 0.5"),
                                            ("level_hull", "no pixel has opacity >= 0.5"),
                                            ("hull", "no point is seen at opacity >= 0.5")])
def test_a_field_without_surface_is_recorded_without_a_mesh(tmp_path, method, message):
    empty = VoxelField.from_values(torch.zeros(8, 8, 8), torch.tensor([0.8, 0.1, 0.1]))
    meta = {"prompt": "a red sphere", "seed": 0, "step": 1}
    record = export_prompt(tmp_path / "work", "000000", empty, [0.5], meta, DistillSettings(ray_samples=8), 16, 1,
                           "cpu", method)
    assert message in record["mesh_error"]
    out = write_outputs(tmp_path / "out", [(record, tmp_path / "work")], {"run": 1})
    [line] = read_index(out)
    assert line["file"] is None and (out / "000000_turntable.gif").is_file() and not (out / "000000.obj").exists()
    assert evaluate_samples(out) == {"n": 1, "shape_accuracy": 0.0, "color_accuracy": 0.0, "prompt_accuracy": 0.0,
                                     "mean_chamfer": None}
