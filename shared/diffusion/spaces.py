"""What "Gaussian noise" means for a modality's data.

A space draws noise, projects onto the subspace the data lives in, and reduces per-element values
to one number per item (sample) together with the item's degrees of freedom. Samplers and losses
touch noise only through a space.

Convention: the leading axis of x indexes *rows*. For plain tensors and padded sets a row is an
item; for sparse graphs (torch-geometric batches) a row is a node and ``batch`` maps nodes to items.
Per-item values (times, coefficients) are lifted to rows with ``to_rows``.
"""
from __future__ import annotations

import torch

from shared.diffusion.broadcast import append_dims
from shared.diffusion.draws import draw_randn


class EuclideanSpace:
    """Plain tensors of any rank: x[b, ...] is item b; noise is N(0, I) on every element."""

    def num_items(self, x: torch.Tensor) -> int:
        return x.shape[0]

    def to_rows(self, per_item: torch.Tensor) -> torch.Tensor:
        return per_item

    def randn_like(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return draw_randn(x.shape, generator, x.device, x.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sum_per_item(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(1).sum(1)

    def dof(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), x[0].numel(), dtype=torch.float64, device=x.device)

    def item_index(self, x: torch.Tensor) -> torch.Tensor:
        """The item each element of x belongs to (−1: padding), shaped like x."""
        return append_dims(torch.arange(x.shape[0], device=x.device), x.ndim).expand(x.shape)


class MaskedSetSpace(EuclideanSpace):
    """Padded variable-size sets x[b, n, ...] with mask[b, n] ∈ {0, 1}; padding holds exact zeros."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask.bool()

    def _mask_like(self, x):
        return append_dims(self.mask.to(x.device), x.ndim).to(x.dtype)

    def randn_like(self, x, generator=None):
        return super().randn_like(x, generator) * self._mask_like(x)

    def project(self, x):
        return x * self._mask_like(x)

    def sum_per_item(self, values):
        return (values * self._mask_like(values)).flatten(1).sum(1)

    def item_index(self, x):
        index = super().item_index(x)
        return torch.where(self._mask_like(x).bool().expand(x.shape), index, -1)

    def dof(self, x):
        per_element = x[0, 0].numel()
        return self.mask.sum(1).to(torch.float64, copy=True).to(x.device) * per_element


class ZeroCoMSpace:
    """Point sets whose first ``position_dims`` channels live in the zero-centre-of-mass subspace.

    Translation-invariant likelihoods need noise restricted to Σ_i x_i = 0 (Hoogeboom et al. 2022,
    EDM, §3.2): positions of an n-point item then have (n − 1)·d degrees of freedom; the remaining
    channels (invariant features) are plain Gaussian.

    Two layouts: sparse rows x[num_nodes, C] with ``batch[num_nodes]`` (torch-geometric), or padded
    x[B, N, C] with ``mask[B, N]``.
    """

    def __init__(self, batch: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 position_dims: int = 3, num_items: int | None = None):
        if (batch is None) == (mask is None):
            raise ValueError("ZeroCoMSpace needs exactly one of `batch` (sparse) or `mask` (padded)")
        self.batch, self.mask, self.position_dims = batch, mask, position_dims
        if batch is not None:
            self._num_items = int(num_items if num_items is not None else batch.max().item() + 1)
            self._counts = torch.bincount(batch, minlength=self._num_items)
        else:
            self.mask = mask.bool()
            self._num_items = mask.shape[0]
            self._counts = self.mask.sum(1)

    def num_items(self, x) -> int:
        return self._num_items

    def to_rows(self, per_item):
        return per_item[self.batch] if self.batch is not None else per_item

    def _node_mask(self, x):
        return append_dims(self.mask.to(x.device), x.ndim).to(x.dtype)

    def _remove_mean(self, positions):
        if self.batch is not None:
            sums = torch.zeros(self._num_items, positions.shape[-1], dtype=positions.dtype,
                               device=positions.device).index_add_(0, self.batch, positions)
            mean = sums / self._counts.clamp(min=1).unsqueeze(-1).to(positions)
            return positions - mean[self.batch]
        node_mask = self._node_mask(positions)
        mean = (positions * node_mask).sum(1, keepdim=True) / node_mask.sum(1, keepdim=True).clamp(min=1)
        return (positions - mean) * node_mask

    def project(self, x):
        d = self.position_dims
        positions, features = x[..., :d], x[..., d:]
        if self.mask is not None:
            features = features * self._node_mask(features)
        return torch.cat([self._remove_mean(positions), features], dim=-1)

    def randn_like(self, x, generator=None):
        rows = self._counts if self.batch is not None else None  # per-item generators: a molecule's rows
        return self.project(draw_randn(x.shape, generator, x.device, x.dtype, rows_per_item=rows))

    def sum_per_item(self, values):
        if self.batch is not None:
            per_node = values.flatten(1).sum(1)
            return torch.zeros(self._num_items, dtype=values.dtype, device=values.device).index_add_(
                0, self.batch, per_node)
        return (values * self._node_mask(values)).flatten(1).sum(1)

    def item_index(self, x):
        if self.batch is not None:
            return append_dims(self.batch.to(x.device), x.ndim).expand(x.shape)
        items = append_dims(torch.arange(x.shape[0], device=x.device), x.ndim).expand(x.shape)
        return torch.where(self._node_mask(x).bool().expand(x.shape), items, -1)

    def dof(self, x):
        counts = self._counts.to(torch.float64).to(x.device)
        feature_dims = x.shape[-1] - self.position_dims
        return (counts - 1) * self.position_dims + counts * feature_dims


def std_per_item(space, x: torch.Tensor) -> torch.Tensor:
    """The (unbiased) standard deviation of each item's elements, lifted back to x's rows; one molecule's
    atoms are one item, not one row each."""
    count = space.sum_per_item(torch.ones_like(x))
    mean = append_dims(space.to_rows(space.sum_per_item(x) / count), x.ndim)
    variance = space.sum_per_item((x - mean) ** 2) / (count - 1).clamp(min=1)
    return append_dims(space.to_rows(variance.sqrt()), x.ndim)


def quantile_per_item(space, values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each item's elements (padding excluded), lifted back to the rows of ``values``."""
    index = space.item_index(values)
    per_item = torch.stack([values[index == item].quantile(q) for item in range(space.num_items(values))])
    return append_dims(space.to_rows(per_item), values.ndim)
