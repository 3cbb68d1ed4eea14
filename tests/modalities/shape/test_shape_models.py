"""Shape networks and geometry: point layers against brute force, permutation symmetry of the encoders
and the point prior, the LION decoder's structure, the SDF autoencoder, marching cubes."""
import numpy as np
import pytest
import torch

from modalities.shape.backbones import PointTransformerBackbone, VectorMLPBackbone
from modalities.shape.mesh import extract_mesh, mesh_from_grid, sample_mesh_points
from modalities.shape.metrics import chamfer_distance
from modalities.shape.point_layers import (PointNetPlusPlusEncoder, farthest_point_sample, gather_points, knn_edges,
                                          nearest_index)
from modalities.shape.pointcloud_vae import PointCloudVAE, chamfer_loss
from modalities.shape.sdf_vae import SDFAutoencoder, clamped_l1, fourier_features


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers make a fresh backbone the constant 0; give every weight a value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return module


def test_farthest_point_sampling_spreads_points_and_ignores_input_order():
    line = torch.linspace(-1, 1, 101)[:, None] * torch.tensor([[1.0, 0.0, 0.0]])
    chosen = line[farthest_point_sample(line[None], 3)[0]]
    assert sorted(chosen[:, 0].tolist()) == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    cloud = torch.randn(1, 300, 3, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    first = cloud[0, farthest_point_sample(cloud, 20)[0]]
    second = cloud[0, perm][farthest_point_sample(cloud[:, perm], 20)[0]]
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="cannot sample"):
        farthest_point_sample(cloud, 301)


def test_knn_edges_and_nearest_index_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    points, targets = torch.randn(2, 50, 3, generator=generator), torch.randn(2, 7, 3, generator=generator)
    source, target = knn_edges(points, targets, k=5)
    for b in range(2):
        for i in range(7):
            mine = set((source[target == b * 7 + i] - b * 50).tolist())
            brute = set(torch.cdist(targets[b, i:i + 1], points[b])[0].topk(5, largest=False).indices.tolist())
            assert mine == brute
    index = nearest_index(targets, points)
    assert torch.equal(index, torch.cdist(targets, points).argmin(-1))


def test_pointnet_plus_plus_code_knows_where_the_patches_are():
    """Offsets alone (p_j − p_i) make a max-pooled code blind to position: it could not tell a box's
    extents apart. The encoder's global code must be permutation-invariant but see translations and
    anisotropic scalings (two boxes of different extents)."""
    torch.manual_seed(0)
    encoder = PointNetPlusPlusEncoder(width=32, out_features=16, k=8).eval()
    cloud = torch.rand(1, 256, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    centres = lambda x: gather_points(x, farthest_point_sample(x, 32))
    code = encoder(cloud, centres(cloud))[1]
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(encoder(cloud[:, perm], centres(cloud[:, perm]))[1], code, rtol=1e-5, atol=1e-6)
    for moved in (cloud + torch.tensor([0.3, 0.0, 0.0]), cloud * torch.tensor([1.0, 0.6, 1.0])):
        assert (encoder(moved, centres(moved))[1] - code).abs().max() > 1e-2


def test_chamfer_loss_equals_the_metric_and_has_gradients():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 64, 3, generator=generator), torch.randn(3, 80, 3, generator=generator)
    x.requires_grad_(True)
    loss = chamfer_loss(x, y)
    torch.testing.assert_close(loss, chamfer_distance(x.detach(), y), rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert chamfer_loss(y, y).abs().max() == 0


def test_point_prior_backbone_is_permutation_equivariant():
    backbone = randomize_(PointTransformerBackbone(point_dim=7, cond_dim=5, width=32, depth=2, heads=4))
    generator = torch.Generator().manual_seed(3)
    x, cond, time = torch.randn(2, 40, 7, generator=generator), torch.randn(2, 5, generator=generator), torch.rand(2)
    perm = torch.randperm(40, generator=generator)
    out = backbone(x, time, cond)
    torch.testing.assert_close(backbone(x[:, perm], time, cond), out[:, perm], rtol=1e-4, atol=1e-5)
    assert out.abs().mean() > 0


def test_vector_backbone_shapes_and_condition_errors():
    backbone = VectorMLPBackbone(dim=16, cond_dim=8, width=32, depth=2)
    out = backbone(torch.randn(4, 16), torch.rand(4), torch.randn(4, 8))
    assert out.shape == (4, 16) and torch.equal(out, torch.zeros_like(out))  # adaLN-Zero: starts at 0
    with pytest.raises(ValueError, match="needs a condition"):
        backbone(torch.randn(4, 16), torch.rand(4), None)
    with pytest.raises(ValueError, match="expected \\(4, 8\\)"):
        backbone(torch.randn(4, 16), torch.rand(4), torch.randn(4, 3))


def tiny_vae():
    return randomize_(PointCloudVAE(num_points=256, num_latent_points=16, point_features=2, global_dim=8, width=32,
                                    k=8, decoder_depth=1, heads=2), seed=1)


def test_pointcloud_vae_latents_ignore_the_input_order_and_children_surround_latent_points():
    vae = tiny_vae().eval()
    x = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(1))
    (g1, p1), (g2, p2) = vae.encode(x), vae.encode(x[:, perm])
    torch.testing.assert_close(g1.mean, g2.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p1.mean, p2.mean, rtol=1e-4, atol=1e-5)
    assert g1.mean.shape == (2, 8) and p1.mean.shape == (2, 16, 5)
    out = vae.decode(g1.mean, p1.mean, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 256, 3)
    # each latent point's 16 children are offsets from its own coordinates: moving one latent point moves
    # exactly its children (up to the decoder's attention mixing, which changes offsets, not anchors)
    shifted = p1.mean.clone()
    shifted[:, 0, :3] += 10.0
    moved = vae.decode(g1.mean, shifted, generator=torch.Generator().manual_seed(0)).view(2, 16, 16, 3)
    assert (moved[:, 0] - out.view(2, 16, 16, 3)[:, 0]).norm(dim=-1).mean() > 5.0
    # children are fresh random samples of each patch: the seed decides them, and only it
    again = vae.decode(g1.mean, p1.mean, generator=torch.Generator().manual_seed(0))
    other = vae.decode(g1.mean, p1.mean, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.allclose(out, other)


def test_pointcloud_vae_rejects_a_point_count_that_latent_points_do_not_divide():
    with pytest.raises(ValueError, match="multiple of num_latent_points"):
        PointCloudVAE(num_points=2000, num_latent_points=128)


def test_sdf_autoencoder_shapes_and_losses():
    model = SDFAutoencoder(latent_dim=8, num_centres=16, k=8, width=32, decoder_width=32, decoder_depth=2,
                           octaves=2)
    surface = torch.randn(3, 200, 3)
    posterior = model.encode(surface)
    assert posterior.mean.shape == (3, 8)
    sdf = model.decode(posterior.mean, torch.rand(3, 50, 3))
    assert sdf.shape == (3, 50)
    assert fourier_features(torch.zeros(2, 3), 2).shape == (2, 3 + 12)
    assert clamped_l1(torch.tensor([5.0, -0.05]), torch.tensor([0.2, 0.05]), 0.1).tolist() == pytest.approx([0.0, 0.1])


def test_marching_cubes_gives_a_closed_outward_mesh_of_the_zero_level():
    mesh = extract_mesh(lambda p: p.norm(dim=-1) - 0.8, resolution=40)
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 / 3 * np.pi * 0.8**3, rel=0.02)
    radii = np.linalg.norm(sample_mesh_points(mesh, 500, seed=0), axis=1)
    assert np.abs(radii - 0.8).max() < 0.02
    # a field negative up to the box wall still closes at the wall
    assert extract_mesh(lambda p: -torch.ones(len(p)), resolution=12).is_watertight
    empty = extract_mesh(lambda p: torch.ones(len(p)), resolution=12)
    assert len(empty.faces) == 0 and np.all(sample_mesh_points(empty, 10, seed=0) == 0)
    with pytest.raises(ValueError, match="NaN"):
        mesh_from_grid(np.full((8, 8, 8), np.nan, np.float32), bound=1.0)
