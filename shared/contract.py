"""The modality contract: what a modality supplies, and what the core does with it.

A modality is a folder ``modalities/<name>/`` of parts and one config ``configs/modality/<name>.yaml``
that wires them. The config declares two things:

``stages``
    The training stages it offers, as data (:class:`shared.training.stage_spec.StageSpec`): per stage a
    ``build`` partial returning a :class:`TrainingTask`, the stages whose finished weights it uses
    ``frozen``, and optionally a stage whose weights it starts from (``init_from``). The experiment's
    ``stages:`` picks which run, in which order, with which trainer settings; the core's runner
    (``shared.training.run``) builds, resumes and trains each one. No modality dispatches on stage names.
``pipeline``
    A partial ``(cfg, run_dir, device) -> SamplingPipeline`` behind ``mldm sample`` and ``mldm evaluate``.

The parts, with the same file roles in every modality:

==================  ====================================================================================
``data.py``         the datasets (train/val/test splits, the tiny synthetic sets), loaders and collate
``autoencoder.py``  the first stage, a :class:`shared.first_stage.autoencoder.FirstStage` (or the same
                    encode/decode/latent-statistics interface for graph data)
``backbones.py``    the denoising networks; :class:`shared.diffusion.denoiser.Denoiser` wraps each one
                    with a schedule and a parameterisation
``components.py``   builders of those parts from the config
``task.py``         the stage builders (:class:`StageBuilder`); the core's stages
                    (``shared.training.stages``) do the training, a modality adapts its data to them
``pipeline.py``     the :class:`SamplingPipeline`; sampling runs through ``shared.generation``
``export.py``       the sample directory's files (``shared.io.sample_dir`` writes the index atomically)
``metrics.py``      the field's metrics on samples or on data
==================  ====================================================================================

The core supplies: noise schedules, parameterisations, losses and samplers (``shared.diffusion``), the
data space a sample lives in (:class:`Space`), classifier-free-guidance dropout
(``shared.conditioning.conditioners.drop_condition``), guidance wrappers, the training loop with
checkpoints, EMA, DDP and exact resume (``shared.training``), seeding and sampling (``shared.generation``)
and the sample-directory format (``shared.io``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig
from torch import nn

from shared.training.randomness import BatchRandomness


class TrainingTask(Protocol):
    """One stage of one modality, as the training loop sees it. ``name`` is set by the runner from the
    stage's declaration."""

    name: str

    def modules(self) -> dict[str, nn.Module]: ...  # everything saved in checkpoints

    def param_groups(self) -> dict[str, list[nn.Parameter]]: ...  # one optimizer each, stepped in order

    def ema_modules(self) -> list[str]: ...  # names whose EMA is kept (and used for sampling)

    def num_examples(self) -> int: ...

    def batch(self, indices: torch.Tensor, device: torch.device) -> dict: ...

    def losses(self, batch: dict, random: BatchRandomness,
               step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]: ...  # per optimizer group, logs

    def preview(self, step: int, out_dir: Path) -> None: ...  # periodic sample export (rank 0, EMA weights)

    def finalize(self) -> None: ...  # after the last step, before the final checkpoint (e.g. latent stats)


class StageBuilder(Protocol):
    """A stage declaration's ``build``: the task of one stage, its frozen inputs loaded from ``run_dir``."""

    def __call__(self, cfg: DictConfig, run_dir: Path, device: torch.device) -> TrainingTask: ...


class Space(Protocol):
    """What "Gaussian noise" means for a modality's data (``shared.diffusion.spaces``): rows of x belong to
    items (samples); samplers and losses draw, project and reduce only through the space."""

    def num_items(self, x: torch.Tensor) -> int: ...

    def to_rows(self, per_item: torch.Tensor) -> torch.Tensor: ...  # lift per-item values to x's rows

    def randn_like(self, x: torch.Tensor, generator=None) -> torch.Tensor: ...  # noise in the subspace

    def project(self, x: torch.Tensor) -> torch.Tensor: ...  # onto the subspace the data lives in

    def sum_per_item(self, values: torch.Tensor) -> torch.Tensor: ...

    def dof(self, x: torch.Tensor) -> torch.Tensor: ...  # degrees of freedom of each item

    def item_index(self, x: torch.Tensor) -> torch.Tensor: ...  # the item of each element (−1: padding)


class Condition(Protocol):
    """A batch of conditions that classifier-free-guidance dropout can replace item by item (label and
    embedding tensors need no wrapper; ``drop_condition`` handles them)."""

    def where(self, drop: torch.Tensor, null) -> Condition: ...


class SamplingPipeline(Protocol):
    """``mldm sample`` / ``mldm evaluate`` for one modality. ``sample`` returns what ``export`` writes as a
    sample directory; ``evaluate_samples`` judges such a directory, ``evaluate_data`` the data itself (the
    papers' "Data" row), ``nll_terms`` hands held-out items, encoded as each prior sees them, to
    ``shared.generation.likelihood``. Options of ``SAMPLING_OPTIONS`` not listed in ``sampling_options`` are refused."""

    sampling_options: tuple[str, ...]

    def sample(self, num_samples: int, prompt: str | None = None, seed: int = 0) -> dict: ...

    def export(self, result: dict, out_dir: Path) -> None: ...

    def evaluate_samples(self, out_dir: Path) -> dict: ...

    def evaluate_data(self, split: str, num_samples: int) -> dict: ...

    def nll_terms(self, split: str, num_samples: int) -> list: ...  # NLLTerms for ``mldm evaluate nll=true``
