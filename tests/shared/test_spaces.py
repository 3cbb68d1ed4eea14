"""Spaces: where noise lives, how many degrees of freedom an item has, and sparse = padded."""
import pytest
import torch

from shared.diffusion.draws import draw_rand, draw_randint, draw_randn
from shared.diffusion.spaces import EuclideanSpace, MaskedSetSpace, ZeroCoMSpace


def _layouts(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([2, 5, 3])
    mask = torch.arange(5)[None, :] < sizes[:, None]
    batch = torch.repeat_interleave(torch.arange(3), sizes)
    dense = torch.randn(3, 5, 6, generator=g) * mask[..., None]
    return sizes, mask, batch, dense, dense[mask]


def test_zero_com_noise_and_projection_sparse_and_padded():
    sizes, mask, batch, dense, sparse = _layouts()
    padded_space, sparse_space = ZeroCoMSpace(mask=mask, position_dims=3), ZeroCoMSpace(batch=batch, position_dims=3)
    projected_dense, projected_sparse = padded_space.project(dense), sparse_space.project(sparse)
    torch.testing.assert_close(projected_dense[mask], projected_sparse)  # the two layouts agree
    assert torch.equal(projected_dense[~mask], torch.zeros_like(projected_dense[~mask]))
    com = torch.zeros(3, 3).index_add_(0, batch, projected_sparse[:, :3])
    assert com.abs().max() < 1e-6
    torch.testing.assert_close(projected_sparse[:, 3:], sparse[:, 3:])  # features untouched
    torch.testing.assert_close(sparse_space.project(projected_sparse), projected_sparse)  # idempotent
    noise = sparse_space.randn_like(sparse, torch.Generator().manual_seed(1))
    assert torch.zeros(3, 3).index_add_(0, batch, noise[:, :3]).abs().max() < 1e-6
    expected_dof = ((sizes - 1) * 3 + sizes * 3).double()
    assert torch.equal(sparse_space.dof(sparse), expected_dof) and torch.equal(padded_space.dof(dense), expected_dof)
    torch.testing.assert_close(sparse_space.sum_per_item(projected_sparse**2), padded_space.sum_per_item(projected_dense**2))
    assert torch.equal(sparse_space.to_rows(torch.tensor([10.0, 20.0, 30.0])), torch.tensor([10.0] * 2 + [20.0] * 5 + [30.0] * 3))


def test_zero_com_noise_has_the_right_covariance():
    """Projected N(0, I) in the (n − 1)·d subspace: per-coordinate variance (n − 1)/n."""
    n = 4
    space = ZeroCoMSpace(batch=torch.zeros(n, dtype=torch.long), position_dims=3)
    draws = torch.stack([space.randn_like(torch.zeros(n, 3), torch.Generator().manual_seed(i)) for i in range(4000)])
    assert abs(draws.var(0).mean().item() - (n - 1) / n) < 0.03


def test_masked_set_space():
    sizes, mask, _, dense, _ = _layouts()
    space = MaskedSetSpace(mask)
    noise = space.randn_like(dense, torch.Generator().manual_seed(0))
    assert torch.equal(noise[~mask], torch.zeros_like(noise[~mask])) and noise[mask].abs().sum() > 0
    assert torch.equal(space.dof(dense), (sizes * 6).double())
    assert torch.equal(space.sum_per_item(torch.ones_like(dense)), (sizes * 6).float())


def test_euclidean_space_any_rank():
    space = EuclideanSpace()
    for shape in [(2, 3), (2, 3, 4), (2, 3, 4, 5), (2, 1, 3, 4, 5)]:
        x = torch.ones(shape)
        assert space.dof(x).tolist() == [x[0].numel()] * 2
        assert space.sum_per_item(x).tolist() == [x[0].numel()] * 2


def test_noise_is_drawn_on_the_generator_and_moved():
    """A CPU generator seeds draws for any device (torch refuses CUDA tensors from it): the values are
    torch's own on the CPU, and a draw for another device advances the generator exactly as a CPU draw."""
    for draw, args in ((draw_randn, ((3, 4),)), (draw_rand, ((5,),)), (draw_randint, (0, 9, (6,)))):
        native = {draw_randn: torch.randn, draw_rand: torch.rand, draw_randint: torch.randint}[draw]
        seeded = torch.Generator().manual_seed(1)
        assert torch.equal(draw(*args, seeded), native(*args, generator=torch.Generator().manual_seed(1)))
        moved, reference = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        assert draw(*args, moved, device="meta").device.type == "meta"
        draw(*args, reference)
        assert torch.equal(torch.rand(4, generator=moved), torch.rand(4, generator=reference))
    space = ZeroCoMSpace(batch=torch.tensor([0, 0, 1, 1, 1]), num_items=2)
    x = torch.zeros(5, 4)
    assert torch.equal(space.randn_like(x, torch.Generator().manual_seed(3)),
                       space.project(torch.randn(5, 4, generator=torch.Generator().manual_seed(3))))



# ---- the contract every space honours, one row per space (a new space adds a row) -------------------------
def _zero_com_sparse():
    return ZeroCoMSpace(batch=torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]), position_dims=3), torch.zeros(9, 5)


def _zero_com_padded():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return ZeroCoMSpace(mask=mask, position_dims=3), torch.zeros(3, 4, 5)


def _masked_set():
    return MaskedSetSpace(torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)), torch.zeros(2, 3, 4)


def _tempered():
    from shared.diffusion.sampler_compositions import TemperedSpace

    space, x = _zero_com_sparse()
    return TemperedSpace(space, 1.0), x


SPACES = {"euclidean": lambda: (EuclideanSpace(), torch.zeros(4, 2, 3, 3)), "masked_set": _masked_set,
          "zero_com_sparse": _zero_com_sparse, "zero_com_padded": _zero_com_padded, "tempered": _tempered}


def position_sums(space: ZeroCoMSpace, positions: torch.Tensor) -> torch.Tensor:
    """Σ_i x_i per item, over the item's real points."""
    if space.batch is not None:
        return torch.zeros(space.num_items(positions), 3).index_add_(0, space.batch, positions)
    return (positions * space.mask[..., None]).sum(1)


@pytest.mark.parametrize("name", SPACES)
def test_space_contract_noise_lives_in_the_space_with_its_degrees_of_freedom(name):
    """Noise is in the space, projection is idempotent, a seed fixes the noise, E|ε|² per item is the
    space's degrees of freedom, and zero-centre-of-mass spaces keep every item's centre at 0."""
    space, x = SPACES[name]()
    g = torch.Generator().manual_seed(0)
    noise = space.randn_like(x, g)
    torch.testing.assert_close(space.project(noise), noise)
    y = torch.randn(x.shape, generator=g)
    torch.testing.assert_close(space.project(space.project(y)), space.project(y))
    assert torch.equal(space.randn_like(x, torch.Generator().manual_seed(0)), noise)
    dof = space.dof(x)
    assert dof.shape == (space.num_items(x),)
    squared = torch.stack([space.sum_per_item(space.randn_like(x, g) ** 2) for _ in range(4000)])
    torch.testing.assert_close(squared.double().mean(0), dof.double(), rtol=0.05, atol=0.0)
    zero_com = getattr(space, "untempered", space)
    if isinstance(zero_com, ZeroCoMSpace):
        assert position_sums(zero_com, noise[..., :3]).abs().max() < 1e-5
