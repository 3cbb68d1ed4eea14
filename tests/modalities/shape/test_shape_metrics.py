"""Point-cloud / mesh metrics: hand-computed distances and the behaviour of MMD, COV and 1-NNA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from modalities.shape.metrics import (chamfer_distance, chamfer_to_nearest, earth_movers_distance,
                                      evaluate_point_clouds, mmd_cov_1nna, normalize_unit_sphere,
                                      pairwise_chamfer, pairwise_emd, watertight_fraction)


def _ellipsoids(n: int, points: int, generator: torch.Generator) -> torch.Tensor:
    """Surface samples of axis-aligned ellipsoids with random semi-axes in [0.3, 1]."""
    directions = torch.randn(n, points, 3, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return directions * (0.3 + 0.7 * torch.rand(n, 1, 3, generator=generator, dtype=torch.float64))


def _boxes(n: int, points: int, generator: torch.Generator) -> torch.Tensor:
    """Surface samples of axis-aligned boxes with random half-extents in [0.3, 1]."""
    cube = 2 * torch.rand(n, points, 3, generator=generator, dtype=torch.float64) - 1
    cube = cube / cube.abs().amax(-1, keepdim=True)          # push every point onto the cube's surface
    return cube * (0.3 + 0.7 * torch.rand(n, 1, 3, generator=generator, dtype=torch.float64))


def _grid(points_per_axis: int = 4) -> torch.Tensor:
    """Points of a unit-spacing grid: every point's nearest other point is at distance 1."""
    axis = torch.arange(points_per_axis, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis, axis)


# ---------------------------------------------------------------- Chamfer distance

def test_chamfer_hand_computed():
    x = torch.tensor([[[0.0, 0, 0]]])
    y = torch.tensor([[[1.0, 2, 2]]])
    assert chamfer_distance(x, y).item() == pytest.approx(2 * 9)      # 2|v|², |v|² = 9
    # x→y: (0,0,0)→(0,1,0): 1, (2,0,0)→(0,1,0): 5, mean 3; y→x: 1 and (5,0,0)→(2,0,0): 9, mean 5
    x = torch.tensor([[[0.0, 0, 0], [2, 0, 0]]])
    y = torch.tensor([[[0.0, 1, 0], [5, 0, 0]]])
    assert chamfer_distance(x, y).item() == pytest.approx(8.0)
    assert chamfer_distance(y, x).item() == pytest.approx(8.0)
    assert pairwise_chamfer(x, y).item() == pytest.approx(8.0)


def test_chamfer_identity_translation_symmetry():
    grid = _grid()[None]
    v = torch.tensor([0.1, 0.2, -0.05], dtype=torch.float64)
    assert chamfer_distance(grid, grid).item() == 0.0
    # the shift is small against the spacing, so every point's nearest neighbour is its twin
    assert chamfer_distance(grid, grid + v).item() == pytest.approx(2 * v.square().sum().item())
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 50, 3, generator=g), torch.randn(3, 70, 3, generator=g)
    assert torch.allclose(chamfer_distance(x, y), chamfer_distance(y, x))
    x.requires_grad_(True)
    chamfer_distance(x, y).sum().backward()                 # differentiable, usable as a loss
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pairwise_chamfer_matches_double_loop():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 60, 3, generator=g), torch.randn(3, 90, 3, generator=g)
    naive = torch.tensor([[chamfer_distance(a[i:i + 1], b[j:j + 1]).item() for j in range(3)] for i in range(4)])
    for batch_size in (1, 3, 64):
        assert torch.allclose(pairwise_chamfer(a, b, batch_size=batch_size), naive, rtol=1e-5)
    assert torch.allclose(pairwise_chamfer(b, a), naive.T, rtol=1e-5)
    assert torch.allclose(pairwise_chamfer(a, b, workers=2), naive, rtol=1e-5)
    self_distances = pairwise_chamfer(a, a)                  # the "b is a" shortcut
    assert torch.equal(self_distances, self_distances.T) and (self_distances.diagonal() == 0).all()
    assert torch.allclose(self_distances, pairwise_chamfer(a, a.clone()), rtol=1e-6)


def test_chamfer_to_nearest():
    g = torch.Generator().manual_seed(2)
    training = _ellipsoids(5, 64, g)
    v = torch.tensor([1e-3, 0.0, 0.0], dtype=torch.float64)
    generated = torch.cat([training[[2, 0]] + v, training[[1]] + 10])
    nearest = chamfer_to_nearest(generated, training)
    assert nearest[:2].tolist() == pytest.approx([2e-6, 2e-6], rel=1e-6)
    assert nearest[2] > 50                                   # 10 away along each axis


# ---------------------------------------------------------------- Earth mover's distance

def test_emd_hand_computed():
    # matchings: 0↔1, 2↔10 costs 1 + 8; 0↔10, 2↔1 costs 10 + 1: EMD = 9 / 2 (nearest-neighbour CD differs)
    x = torch.tensor([[0.0, 0, 0], [2, 0, 0]])
    y = torch.tensor([[1.0, 0, 0], [10, 0, 0]])
    assert earth_movers_distance(x, y) == pytest.approx(4.5)
    assert chamfer_distance(x[None], y[None]).item() == pytest.approx((1 + 1) / 2 + (1 + 64) / 2)


def test_emd_identity_translation_permutation():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    v = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    assert earth_movers_distance(x, x) == 0.0
    # a pure translation: the identity matching is optimal for any v (triangle inequality), EMD = |v|
    assert earth_movers_distance(x, x + v) == pytest.approx(v.norm().item())
    assert earth_movers_distance(x, x[torch.randperm(40, generator=g)]) == 0.0
    with pytest.raises(ValueError, match="equal-size"):
        earth_movers_distance(x, x[:30])


def test_pairwise_emd_uses_the_same_subset_for_every_cloud():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 100, 3, generator=g, dtype=torch.float64)
    v = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    # the same indices on both sides keep a translated copy a pure translation
    assert pairwise_emd(a, a + v, num_points=32).diagonal().tolist() == pytest.approx([0.5] * 3)
    # with num_points >= P all points are used: exactly the full EMD
    full = pairwise_emd(a[:2], a[1:], num_points=100)
    assert full[0, 1].item() == pytest.approx(earth_movers_distance(a[0], a[2]))
    self_distances = pairwise_emd(a, a, num_points=32)
    assert torch.equal(self_distances, self_distances.T) and (self_distances.diagonal() == 0).all()
    assert torch.allclose(self_distances, pairwise_emd(a, a.clone(), num_points=32, workers=2))


# ---------------------------------------------------------------- MMD / COV / 1-NNA

def test_mmd_cov_1nna_hand_computed_with_ties():
    # generated: two copies of shape A; reference: A and B with D(A, B) = 1
    d_gg = torch.zeros(2, 2)
    d_gr = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    d_rr = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    stats = mmd_cov_1nna(d_gr, d_gg, d_rr)
    assert stats["mmd"] == pytest.approx(0.5)                # refs: A at 0, B at 1
    assert stats["cov"] == pytest.approx(0.5)                # both generated clouds pick A
    # ties go to the lowest index of [gen0, gen1, ref0, ref1]: gen0 → gen1 and gen1 → gen0 (right),
    # ref0 → gen0 (tied with gen1) and ref1 → gen0 (tied with gen1 and ref0) (wrong)
    assert stats["1-nna"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="distances_ref_ref"):
        mmd_cov_1nna(d_gr, d_gg, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        mmd_cov_1nna(d_gr, d_gg, torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.cat([_ellipsoids(20, 128, g), _boxes(20, 128, g)])


def test_identical_sets(reference):
    result = evaluate_point_clouds(reference, reference.clone(), emd_points=32)
    # every cloud's nearest other cloud is its twin at distance 0: always the wrong label
    assert result["1-NNA-CD"] == 0.0 and result["1-NNA-EMD"] == 0.0
    assert result["MMD-CD"] == 0.0 and result["MMD-EMD"] == 0.0
    assert result["COV-CD"] == 1.0 and result["COV-EMD"] == 1.0
    assert result["n_generated"] == result["n_reference"] == 40


def test_far_away_generator_is_separable(reference):
    result = evaluate_point_clouds(reference + 100.0, reference, emd_points=32)
    assert result["1-NNA-CD"] == 1.0 and result["1-NNA-EMD"] == 1.0
    assert result["MMD-CD"] > 3 * 100.0 ** 2 * 0.9


def test_collapsed_generator(reference):
    g = torch.Generator().manual_seed(6)
    sphere = torch.randn(128, 3, generator=g, dtype=torch.float64)
    sphere = 0.6 * sphere / sphere.norm(dim=-1, keepdim=True)
    result = evaluate_point_clouds(sphere.expand(30, -1, -1).clone(), reference, emd_points=32)
    assert result["COV-CD"] == pytest.approx(1 / 40) and result["COV-EMD"] == pytest.approx(1 / 40)
    assert result["1-NNA-CD"] >= 0.8 and result["1-NNA-EMD"] >= 0.8


def test_independent_draws_are_indistinguishable(reference):
    g = torch.Generator().manual_seed(7)
    generated = torch.cat([_ellipsoids(20, 128, g), _boxes(20, 128, g)])
    result = evaluate_point_clouds(generated, reference, emd_points=64)
    assert 0.35 <= result["1-NNA-CD"] <= 0.65
    assert 0.35 <= result["1-NNA-EMD"] <= 0.65
    assert result["COV-CD"] >= 0.4 and result["COV-EMD"] >= 0.4
    # a generator of only ellipsoids against the same reference is told apart far more easily
    ellipsoids_only = evaluate_point_clouds(_ellipsoids(40, 128, g), reference, emd_points=0)
    assert ellipsoids_only["1-NNA-CD"] > result["1-NNA-CD"] + 0.1
    assert "1-NNA-EMD" not in ellipsoids_only


def test_unit_sphere_normalisation(reference):
    shifted = 3.0 * reference[:10] + torch.tensor([5.0, -2.0, 1.0], dtype=torch.float64)
    normalised = normalize_unit_sphere(shifted)
    centre = (normalised.amax(1) + normalised.amin(1)) / 2
    assert torch.allclose(centre, torch.zeros_like(centre), atol=1e-12)
    assert torch.allclose(normalised.norm(dim=-1).amax(1), torch.ones(10, dtype=torch.float64))
    raw = evaluate_point_clouds(shifted, reference[:10], emd_points=0)
    same_frame = evaluate_point_clouds(shifted, reference[:10], emd_points=0, normalize="unit_sphere")
    assert raw["1-NNA-CD"] == 1.0 and same_frame["1-NNA-CD"] == 0.0
    with pytest.raises(ValueError, match="normalize"):
        evaluate_point_clouds(shifted, reference[:10], normalize="unit_cube")


# ---------------------------------------------------------------- meshes and input checks

def test_watertight_fraction():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[1:], process=False)
    empty = trimesh.Trimesh()
    assert sphere.is_watertight and not holed.is_watertight
    assert watertight_fraction([sphere]) == 1.0
    assert watertight_fraction([sphere, holed, empty]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        watertight_fraction([])


def test_bad_inputs_raise_clear_errors():
    clouds = torch.zeros(4, 16, 3)
    clouds[2, 5, 1] = float("nan")
    with pytest.raises(ValueError, match="generated point clouds contain NaN/inf at sample 2"):
        evaluate_point_clouds(clouds, torch.zeros(4, 16, 3))
    clouds[2, 5, 1] = math.inf
    with pytest.raises(ValueError, match="reference point clouds contain NaN/inf at sample 2"):
        evaluate_point_clouds(torch.zeros(4, 16, 3), clouds)
    with pytest.raises(ValueError, match=r"\[B, P, 3\]"):
        pairwise_chamfer(torch.zeros(4, 16, 2), torch.zeros(4, 16, 3))
    with pytest.raises(ValueError, match=r"\[B, P, 3\]"):
        chamfer_distance(torch.zeros(16, 3), torch.zeros(16, 3))
    with pytest.raises(ValueError, match=r"\[P, 3\]"):
        earth_movers_distance(torch.zeros(1, 16, 3), torch.zeros(1, 16, 3))
    with pytest.raises(ValueError, match="empty"):
        evaluate_point_clouds(torch.zeros(0, 16, 3), torch.zeros(4, 16, 3))
    with pytest.raises(ValueError, match="empty"):
        pairwise_emd(torch.zeros(4, 0, 3), torch.zeros(4, 16, 3))
    with pytest.raises(ValueError, match="same number of clouds"):
        chamfer_distance(torch.zeros(2, 16, 3), torch.zeros(3, 16, 3))
    with pytest.raises(TypeError):
        pairwise_chamfer(np.zeros((2, 16, 3)), torch.zeros(2, 16, 3))
