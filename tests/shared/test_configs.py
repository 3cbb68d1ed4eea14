"""Every config in configs/ composes and instantiates (DESIGN.md: "Every config in the tree is composed
and instantiated by a test"). Options are discovered from the tree, so a new YAML is tested at once."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from shared.cli.config import ConfigError, build_config, group_options
from shared.generation.sampler import guided_sampler
from shared.diffusion.losses import DenoisingScoreMatching, mean_per_item
from shared.diffusion.parameterization import Parameterization
from shared.diffusion.schedules import NoiseSchedule
from shared.diffusion.spaces import EuclideanSpace

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GROUPS = group_options(CONFIGS)
OPTIONS = [(group, option) for group, options in GROUPS.items() for option in options]
CORE_GROUPS = ("schedule", "parameterization", "loss", "sampler", "guidance", "trainer")
# sample_diffusers imports diffusers (~7 s) when run: here its partial is only checked against the signature.
NOT_RUN_HERE = {"shared.diffusion.diffusers_adapter.sample_diffusers"}


class ZeroBackbone(torch.nn.Module):
    def forward(self, x, time, cond=None):
        return torch.zeros_like(x)


def shrink(x_t, t, cond=None):
    """A stand-in denoiser x̂_0 = x_t / 2."""
    return 0.5 * x_t


def check_partial(fn, *args, **kwargs):
    """An instantiated `_partial_` config: callable, and its keywords exist in the target's signature."""
    assert isinstance(fn, functools.partial) and callable(fn)
    inspect.signature(fn.func).bind(*args, *fn.args, **{**fn.keywords, **kwargs})


def check_schedule(schedule):
    assert isinstance(schedule, NoiseSchedule)
    alpha_bar = float(schedule.alpha_bar(torch.tensor([0.5], dtype=torch.float64)))
    assert 0.0 < alpha_bar < 1.0


def check_parameterization(parameterization):
    assert isinstance(parameterization, Parameterization)


def check_loss(loss, cfg):
    assert isinstance(loss, DenoisingScoreMatching)
    denoiser = _denoiser(cfg)
    x0 = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0))
    per_element = loss(denoiser, x0, generator=torch.Generator().manual_seed(1))
    assert per_element.shape == x0.shape
    assert torch.isfinite(mean_per_item(EuclideanSpace(), per_element, x0)).all()


def check_sampler(sampler, cfg):
    x_T = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    schedule = instantiate(cfg.schedule)
    if isinstance(sampler, functools.partial):  # a sampler with its options, or a builder's composition
        check_partial(sampler, shrink, x_T, schedule)
        if sampler.func.__module__ + "." + sampler.func.__name__ in NOT_RUN_HERE:
            return
    else:
        assert callable(sampler)
        inspect.signature(sampler).bind(shrink, x_T, schedule, 4)
    x0 = sampler(shrink, x_T, schedule, steps=cfg.get("steps", 4), generator=torch.Generator().manual_seed(1))
    assert x0.shape == x_T.shape and torch.isfinite(x0).all()


def check_guidance(guidance):
    inspect.signature(guidance).bind(shrink, uncond=None, space=None)  # the factory every pipeline calls
    guided = guidance(shrink, uncond=None)
    x = torch.ones(2, 3)
    assert guided(x, torch.full((2,), 0.5), None).shape == x.shape


def check_trainer(trainer):
    assert isinstance(trainer, DictConfig) and "_target_" not in trainer


def _denoiser(cfg):
    from shared.diffusion.denoiser import Denoiser

    return Denoiser(ZeroBackbone(), instantiate(cfg.schedule), instantiate(cfg.parameterization))


def check_core(cfg):
    """Instantiate and exercise every core node of a composed config."""
    check_schedule(instantiate(cfg.schedule))
    check_parameterization(instantiate(cfg.parameterization))
    check_loss(instantiate(cfg.loss), cfg)
    check_sampler(instantiate(cfg.sampler), cfg)
    check_guidance(instantiate(cfg.guidance))
    check_trainer(instantiate(cfg.trainer))


def test_tree_layout():
    top = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert top == ["evaluate", "sample", "sds", "train"]   # one per command of shared.cli.main.ENGINES
    expected = {"modality", "data", "autoencoder", "backbone", "schedule", "parameterization", "loss",
                "sampler", "guidance", "trainer", "experiment"}
    assert set(GROUPS) == expected
    for group in GROUPS:
        entries = list((CONFIGS / group).iterdir())
        assert entries, f"configs/{group} is empty (keep a .gitkeep)"
        strays = [e.name for e in entries if e.is_dir() or (e.suffix != ".yaml" and e.name != ".gitkeep")]
        assert not strays, f"configs/{group}: nested folders or non-YAML files are not tested: {strays}"
    for group in CORE_GROUPS:
        assert GROUPS[group], f"configs/{group} needs at least one option"


def _image_folder(tmp_path) -> list[str]:
    """data=image_folder needs a real folder: one PNG."""
    from PIL import Image

    Image.new("RGB", (40, 36), (200, 10, 10)).save(tmp_path / "red.png")
    return [f"data.root={tmp_path}"]


def _mesh_folder(tmp_path) -> list[str]:
    """data=mesh_folder needs a real folder: one mesh in one class folder."""
    import trimesh

    (tmp_path / "box").mkdir()
    trimesh.creation.box().export(tmp_path / "box" / "a.obj")
    return [f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"]


def _molecule_files(tmp_path) -> list[str]:
    """data=molecule_files needs a real file: one water molecule as .xyz."""
    (tmp_path / "water.xyz").write_text("3\nwater\nO 0 0 0.12\nH 0 0.76 -0.47\nH 0 -0.76 -0.47\n")
    return [f"data.paths={tmp_path / 'water.xyz'}"]


def _video_folder(tmp_path) -> list[str]:
    """data=video_folder needs a real folder: one 8-frame MP4."""
    import numpy as np

    from modalities.video.files import write_mp4

    write_mp4(tmp_path / "clip.mp4", np.zeros((8, 32, 32, 3), np.uint8))
    return [f"data.root={tmp_path}"]


FOLDER_DATA = {("data", "image_folder"): _image_folder, ("data", "mesh_folder"): _mesh_folder,
               ("data", "molecule_files"): _molecule_files, ("data", "video_folder"): _video_folder}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    extra = FOLDER_DATA[group, option](tmp_path) if (group, option) in FOLDER_DATA else []
    cfg = build_config("train", [f"{group}={option}", *extra], root=CONFIGS)
    if group == "experiment":  # a `_global_` preset: it must leave a complete, working config
        assert cfg.get("modality") is not None, f"experiment={option} selects no modality"
        check_core(cfg)
        return
    node = cfg[group]
    if group in CORE_GROUPS:
        checks = {"schedule": lambda: check_schedule(instantiate(node)),
                  "parameterization": lambda: check_parameterization(instantiate(node)),
                  "loss": lambda: check_loss(instantiate(node), cfg),
                  "sampler": lambda: check_sampler(instantiate(node), cfg),
                  "guidance": lambda: check_guidance(instantiate(node)),
                  "trainer": lambda: check_trainer(instantiate(node))}
        checks[group]()
    else:  # modality/data/autoencoder/backbone: every node must at least build
        assert instantiate(node) is not None


def test_train_defaults():
    cfg = build_config("train", [], root=CONFIGS)
    assert cfg.seed == 0 and cfg.resume is False and cfg.run_dir is None
    assert cfg.get("modality") is None  # chosen by an experiment preset
    check_core(cfg)


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_sample_and_evaluate_compose(command):
    cfg = build_config(command, [], root=CONFIGS)
    assert isinstance(cfg.num_samples, int) and isinstance(cfg.steps, int)
    if command == "sample":
        assert cfg.sampler._target_ == "shared.diffusion.samplers.sample_dpmpp_2m" and cfg.steps == 20
        assert cfg.prompt is None and cfg.guidance_scale is None
    else:
        assert cfg.source in ("samples", "data") and cfg.split in ("train", "val", "test", "all")
    check_core(cfg)


def test_edm_loss_follows_parameterization_sigma_data():
    cfg = build_config("train", ["loss=edm", "parameterization=edm", "parameterization.sigma_data=1.0"],
                       root=CONFIGS)
    assert instantiate(cfg.loss).weighting.sigma_data == 1.0
    assert build_config("train", ["loss=edm"], root=CONFIGS).loss.weighting.sigma_data == 0.5


def test_guidance_scale_sets_cfg_scale():
    cfg = build_config("sample", ["guidance=cfg", "guidance_scale=3"], root=CONFIGS)
    assert cfg.guidance.scale == 3.0 and instantiate(cfg.guidance)(shrink, uncond=None).scale == 3.0


def test_guidance_configs_compose_cfg_and_thresholding_and_name_bad_keys():
    from shared.diffusion.guidance import ClassifierFreeGuidance, DynamicThresholding

    cfg = build_config("sample", ["guidance=cfg", "guidance.thresholding=dynamic"], root=CONFIGS)
    guided = instantiate(cfg.guidance)(shrink, uncond=None)
    assert isinstance(guided, DynamicThresholding) and isinstance(guided.denoiser, ClassifierFreeGuidance)
    unguided = build_config("sample", ["guidance=none"], root=CONFIGS)
    assert instantiate(unguided.guidance)(shrink, uncond=None) is shrink
    with pytest.raises(ConfigError, match="guidance_scale=3.0 needs a guidance with a scale"):
        build_config("sample", ["guidance=none", "guidance_scale=3"], root=CONFIGS)
    bad = build_config("sample", ["guidance=none", "guidance.thresholding=soft"], root=CONFIGS)
    with pytest.raises(ValueError, match="guidance.thresholding='soft'"):  # as `mldm sample` reports it
        guided_sampler(bad, None)
    bad = build_config("sample", ["sampler=ddpm", "sampler.resample=0"], root=CONFIGS)
    with pytest.raises(ValueError, match="sampler.resample must be >= 1"):
        guided_sampler(bad, None)


def test_resolved_config_round_trips():
    cfg = build_config("train", ["schedule=cosine_shifted"], root=CONFIGS)
    again = OmegaConf.create(OmegaConf.to_yaml(cfg))
    assert again == cfg
    check_schedule(instantiate(again.schedule))


def test_a_run_written_before_the_core_moved_into_sub_packages_still_loads(tmp_path):
    from shared.cli.config import load_run_config

    (tmp_path / "config.yaml").write_text("sampler: {_target_: shared.samplers.sample_ddim, _partial_: true}\n"
                                          "old_ddpm: {_target_: shared.samplers.sample_ddpm, _partial_: true, "
                                          "noise_scale: 0.6, resample: 1, refine_steps: 0, refine_time: 0.1}\n"
                                          "schedule: {_target_: shared.schedules.CosineSchedule}\n"
                                          "backbone: {_target_: modalities.image.backbones.DiT}\n")
    cfg = load_run_config(tmp_path)
    assert cfg.sampler._target_ == "shared.diffusion.samplers.sample_ddim" and cfg.sampler._partial_
    assert cfg.schedule._target_ == "shared.diffusion.schedules.CosineSchedule"
    assert cfg.backbone._target_ == "modalities.image.backbones.DiT"
    # sample_ddpm's options became compositions that a builder assembles: its node is the builder's now
    assert cfg.old_ddpm._target_ == "shared.cli.samplers.ddpm" and "_partial_" not in cfg.old_ddpm
    assert callable(instantiate(cfg.old_ddpm))
