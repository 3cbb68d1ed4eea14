"""What `mldm evaluate` reports for shapes: PointFlow/LION set metrics (1-NNA, MMD, COV with CD and
EMD) of generated clouds against a fresh draw of the data, the class agreement of class-conditional
samples, and the "Data" row — the same metrics between two independent draws of the data."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from modalities.shape.components import load_shapes
from modalities.shape.metrics import evaluate_point_clouds, pairwise_chamfer

WORKERS = 2  # threads for the k-d tree queries and assignments (they release the GIL)


def reference_set(cfg: DictConfig, num_samples: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` shapes of ``split`` (the synthetic sets draw them afresh); a folder dataset
    without splits gives a seeded random subset of its shapes."""
    data, _ = load_shapes(cfg, split=split, num_samples=num_samples, with_sdf=False)
    points, labels = data["points"], data["labels"]
    if len(points) > num_samples:
        keep = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:num_samples]
        points, labels = points[keep], labels[keep]
    return points, labels


def class_agreement(points: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
                    reference_labels: torch.Tensor, num_points: int = 512) -> float:
    """Fraction of samples whose nearest reference shape (Chamfer, on a fixed subset of ``num_points``
    points per cloud: identity of the class, not fine geometry) has the class they were asked for."""
    subset = torch.randperm(min(points.shape[1], reference.shape[1]), generator=torch.Generator().manual_seed(0))
    subset = subset[:num_points]
    nearest = pairwise_chamfer(points[:, subset], reference[:, subset], workers=WORKERS).argmin(1)
    return float((reference_labels[nearest] == labels).float().mean())


def compare_with_data(cfg: DictConfig, points: torch.Tensor, labels: torch.Tensor | None) -> dict:
    settings = cfg.modality.evaluation
    reference, reference_labels = reference_set(cfg, len(points), settings.reference_split)
    metrics = evaluate_point_clouds(points, reference, emd_points=settings.emd_points, workers=WORKERS)
    metrics["n"] = len(points)
    if labels is not None:
        metrics["class_agreement"] = class_agreement(points, labels, reference, reference_labels)
    return metrics


def data_row(cfg: DictConfig, split: str, num_samples: int) -> dict:
    """The metrics between ``split`` (``all``: test) and an independent draw of another split: what a
    perfect generator would score (1-NNA ≈ 0.5, up to the sample size)."""
    first = "test" if split == "all" else split
    second = "val" if first != "val" else "train"
    points, _ = reference_set(cfg, num_samples, first)
    reference, _ = reference_set(cfg, num_samples, second)
    if torch.equal(points, reference):  # a folder dataset has no splits: compare two disjoint halves
        half = len(points) // 2
        points, reference = points[:half], points[half:2 * half]
    metrics = evaluate_point_clouds(points, reference, emd_points=cfg.modality.evaluation.emd_points,
                                    workers=WORKERS)
    return {**metrics, "n": len(points), "splits": f"{first} vs {second}"}
