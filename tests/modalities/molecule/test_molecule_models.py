"""Molecule networks: E(3) equivariance (reflections included), permutation equivariance, batching
without padding, sparse = dense EGNN, and a tiny autoencoder that learns.

Equivariance checks run in float32 against 1e-4 and in float64 against 1e-7 (where any violation
above round-off shows; e3nn's float64 error, ~1e-9, is its largest). EDM initialises the coordinate
MLP's last layer at gain 0.001, which makes every position update nearly zero and an equivariance
check of it nearly vacuous, so the tests enlarge those weights first (``energise``). The sparse/dense
comparison runs in float32.
"""
from __future__ import annotations

import pytest
import torch

from modalities.molecule.autoencoder import MoleculeAutoencoder, MoleculePosterior, molecule_autoencoder_loss
from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.dynamics import EGNNDynamics
from modalities.molecule.e3nn_backbone import E3nnDynamics
from modalities.molecule.egnn import EGNN, CoordinateUpdate
from modalities.molecule.egnn_dense import dense_egnn
from shared.conditioning.conditioners import drop_condition
from shared.diffusion.spaces import ZeroCoMSpace

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-7}
DTYPES = [torch.float32, torch.float64]
SIZES = (4, 1, 7, 2, 5)        # different sizes in one batch, a single atom included
NUM_TYPES, LATENT = 5, 2
ERRORS: dict[str, float] = {}  # measured max errors, printed at the end with -s


def fully_connected_edges(batch: torch.Tensor) -> torch.Tensor:
    """[2, E] every ordered pair (j -> i, j ≠ i) of atoms of the same molecule."""
    same = batch[:, None] == batch[None, :]
    same.fill_diagonal_(False)
    return same.nonzero().T.contiguous()


def orthogonal(det: float, generator: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal 3×3 matrix with the given determinant (−1: a reflection)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


def energise(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Make the EGNN coordinate updates O(1) (see the module docstring)."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, CoordinateUpdate):
            torch.nn.init.normal_(module.coord_mlp[-1].weight, std=std)
    return model


def molecules(sizes=SIZES, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pos = 1.5 * torch.randn(len(batch), 3, generator=g, dtype=dtype)
    atom_type = torch.randint(0, NUM_TYPES, (len(batch),), generator=g)
    return atom_type, pos, batch


def transformation(n: int, num_molecules: int, batch: torch.Tensor, det: float, dtype=torch.float64, seed: int = 1):
    """(R, t per molecule [M, 3], atom order, new molecule labels): rows are shuffled across the whole
    batch (within and between molecules) and molecules relabelled."""
    g = torch.Generator().manual_seed(seed)
    rotation = orthogonal(det, g).to(dtype)
    shift = 3.0 * torch.randn(num_molecules, 3, generator=g, dtype=torch.float64).to(dtype)
    order = torch.randperm(n, generator=g)
    relabel = torch.randperm(num_molecules, generator=g)
    return rotation, shift, order, relabel[batch[order]]


def record(name: str, error: float, dtype) -> float:
    key = f"{name} ({str(dtype).removeprefix('torch.')})"
    ERRORS[key] = max(ERRORS.get(key, 0.0), error)
    return error


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def report_errors():
    yield
    print("\nmax equivariance / agreement errors:", {k: f"{v:.1e}" for k, v in sorted(ERRORS.items())})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("det", [1.0, -1.0])
def test_egnn_is_e3_and_permutation_equivariant(det, dtype):
    torch.manual_seed(0)
    model = energise(EGNN(6, 16, 4, num_blocks=3, inv_sublayers=2)).to(dtype)
    _, pos, batch = molecules(dtype=dtype)
    h = torch.randn(len(batch), 6, dtype=dtype)
    h_out, x_out = model(h, pos, fully_connected_edges(batch))
    rotation, shift, order, new_batch = transformation(len(batch), len(SIZES), batch, det, dtype)
    moved = pos[order] @ rotation.T + shift[batch[order]]
    h_moved, x_moved = model(h[order], moved, fully_connected_edges(new_batch))
    assert (x_out - pos).abs().max() > 0.1  # the coordinate updates are not negligible
    expected_x = x_out[order] @ rotation.T + shift[batch[order]]
    assert record("egnn h", max_error(h_moved, h_out[order]), dtype) < TOLERANCE[dtype]
    assert record("egnn x", max_error(x_moved, expected_x), dtype) < TOLERANCE[dtype]


@pytest.mark.parametrize("distance_expansion, edge_context", [(0, 0), (8, 0), (8, 3)])
def test_sparse_and_dense_egnn_agree(distance_expansion, edge_context):
    torch.manual_seed(0)
    model = energise(EGNN(6, 32, 4, num_blocks=3, inv_sublayers=2, distance_expansion=distance_expansion,
                          edge_context_features=edge_context))
    _, pos, batch = molecules(dtype=torch.float32)
    h = torch.randn(len(batch), 6)
    n_max = max(SIZES)
    slot = torch.cat([torch.arange(s) for s in SIZES])
    edges = fully_connected_edges(batch)
    pair_context = torch.randn(len(SIZES), n_max, n_max, edge_context)     # [B, i, j, c]
    sparse_context = pair_context[batch[edges[1]], slot[edges[1]], slot[edges[0]]] if edge_context else None
    h_sparse, x_sparse = model(h, pos, edges, sparse_context)

    mask = torch.zeros(len(SIZES), n_max, dtype=torch.bool)
    mask[batch, slot] = True
    h_pad = torch.full((len(SIZES), n_max, 6), 7.0)  # junk in padding must not leak into real atoms
    x_pad = torch.full((len(SIZES), n_max, 3), -5.0)
    h_pad[batch, slot], x_pad[batch, slot] = h, pos
    h_dense, x_dense = dense_egnn(model, h_pad, x_pad, mask, pair_context if edge_context else None)

    assert record(f"sparse-dense h ({distance_expansion} Gaussians)", max_error(h_dense[batch, slot], h_sparse), torch.float32) < 1e-5
    assert record(f"sparse-dense x ({distance_expansion} Gaussians)", max_error(x_dense[batch, slot], x_sparse), torch.float32) < 1e-5
    assert torch.all(h_dense[~mask] == 0) and torch.all(x_dense[~mask] == 0)


def small_autoencoder(**kwargs) -> MoleculeAutoencoder:
    torch.manual_seed(0)
    return MoleculeAutoencoder(NUM_TYPES, LATENT, hidden=32, encoder_blocks=2, decoder_blocks=2, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("det", [1.0, -1.0])
def test_encoder_and_decoder_equivariance(det, dtype):
    model = energise(small_autoencoder(include_charges=True)).to(dtype)
    tol = TOLERANCE[dtype]
    atom_type, pos, batch = molecules(dtype=dtype)
    posterior = model.encode(atom_type, pos, batch, fully_connected_edges(batch))
    rotation, shift, order, new_batch = transformation(len(batch), len(SIZES), batch, det, dtype)
    moved = pos[order] @ rotation.T + shift[batch[order]]
    moved_posterior = model.encode(atom_type[order], moved, new_batch, fully_connected_edges(new_batch))

    z_x, z_h = posterior.mean[:, :3], posterior.mean[:, 3:]
    space = ZeroCoMSpace(batch=batch)
    assert max_error(space.project(z_x), z_x) < tol / 10  # z_x already has zero CoM
    assert record("encoder z_x", max_error(moved_posterior.mean[:, :3], z_x[order] @ rotation.T), dtype) < tol
    assert record("encoder z_h", max_error(moved_posterior.mean[:, 3:], z_h[order]), dtype) < tol
    assert record("encoder logvar", max_error(moved_posterior.logvar, posterior.logvar[order]), dtype) < tol

    z = posterior.sample(torch.Generator().manual_seed(0))
    assert max_error(space.project(z), z) < tol / 10  # draws stay in the zero-CoM subspace
    decoded = model.decode(z, batch, fully_connected_edges(batch))
    z_moved = torch.cat([z[order, :3] @ rotation.T + shift[batch[order]], z[order, 3:]], dim=1)
    decoded_moved = model.decode(z_moved, new_batch, fully_connected_edges(new_batch))
    expected_positions = decoded.positions[order] @ rotation.T
    assert record("decoder positions", max_error(decoded_moved.positions, expected_positions), dtype) < tol
    assert record("decoder logits", max_error(decoded_moved.atom_logits, decoded.atom_logits[order]), dtype) < tol
    assert record("decoder charges", max_error(decoded_moved.charges, decoded.charges[order]), dtype) < tol
    assert max_error(space.project(decoded.positions), decoded.positions) < tol / 10


def backbones(dtype=torch.float64):
    torch.manual_seed(0)
    return {"egnn": energise(EGNNDynamics(LATENT, hidden=16, num_blocks=3, property_features=2)).to(dtype),
            "egnn_gaussians": energise(EGNNDynamics(LATENT, hidden=16, num_blocks=3, property_features=2,
                                                    distance_expansion=8)).to(dtype),
            "e3nn": E3nnDynamics(LATENT, hidden_irreps="8x0e + 4x1o + 4x1e + 2x2e", num_blocks=2,
                                 property_features=2, radial_hidden=16).to(dtype)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["egnn", "egnn_gaussians", "e3nn"])
@pytest.mark.parametrize("det", [1.0, -1.0])
def test_dynamics_equivariance_and_zero_com(name, det, dtype):
    model, tol = backbones(dtype)[name], TOLERANCE[dtype]
    _, pos, batch = molecules(dtype=dtype)
    g = torch.Generator().manual_seed(3)
    features = torch.randn(len(batch), LATENT, generator=g, dtype=dtype)
    time = (1000 * torch.rand(len(SIZES), generator=g, dtype=dtype))[batch]
    properties = torch.randn(len(SIZES), 2, generator=g, dtype=dtype)
    present = torch.tensor([True, False, True, True, False])
    cond = MoleculeCondition(batch, fully_connected_edges(batch), properties, present)
    out = model(torch.cat([pos, features], 1), time, cond)

    rotation, shift, order, new_batch = transformation(len(batch), len(SIZES), batch, det, dtype)
    moved = pos[order] @ rotation.T + shift[batch[order]]
    new_props, new_present = torch.empty_like(properties), torch.empty_like(present)
    new_props[new_batch], new_present[new_batch] = properties[batch[order]], present[batch[order]]
    moved_cond = MoleculeCondition(new_batch, fully_connected_edges(new_batch), new_props, new_present)
    moved_out = model(torch.cat([moved, features[order]], 1), time[order], moved_cond)

    assert out.shape == (len(batch), 3 + LATENT)
    assert max_error(ZeroCoMSpace(batch=batch).project(out), out) < tol / 10
    assert out[:, :3].abs().max() > 0.1  # a real vector output, so the check means something
    assert record(f"{name} position output", max_error(moved_out[:, :3], out[order, :3] @ rotation.T), dtype) < tol
    assert record(f"{name} feature output", max_error(moved_out[:, 3:], out[order, 3:]), dtype) < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("det", [1.0, -1.0])
def test_self_conditioned_dynamics_are_equivariant_in_the_estimate_too(det, dtype):
    """x̂_0 = f(x_t, x̃_0, t): moving x_t and the estimate x̃_0 alike moves the output alike, and the
    estimate's absence (zeros, presence flag 0) is a different input from any estimate."""
    torch.manual_seed(0)
    model = energise(EGNNDynamics(LATENT, hidden=16, num_blocks=3, distance_expansion=8,
                                  self_conditioning=True)).to(dtype)
    tol = TOLERANCE[dtype]
    _, pos, batch = molecules(dtype=dtype)
    g = torch.Generator().manual_seed(5)
    features = torch.randn(len(batch), LATENT, generator=g, dtype=dtype)
    estimate = torch.cat([pos + 0.3 * torch.randn(pos.shape, generator=g, dtype=dtype),
                          torch.randn(len(batch), LATENT, generator=g, dtype=dtype)], 1)
    time = (1000 * torch.rand(len(SIZES), generator=g, dtype=dtype))[batch]
    cond = MoleculeCondition(batch, fully_connected_edges(batch))
    out = model(torch.cat([pos, features], 1), time, cond, self_condition=estimate)

    rotation, shift, order, new_batch = transformation(len(batch), len(SIZES), batch, det, dtype)
    move = lambda x: x[order] @ rotation.T + shift[batch[order]]             # noqa: E731
    moved_estimate = torch.cat([move(estimate[:, :3]), estimate[order, 3:]], 1)
    moved_out = model(torch.cat([move(pos), features[order]], 1), time[order],
                      MoleculeCondition(new_batch, fully_connected_edges(new_batch)), self_condition=moved_estimate)
    assert record("self-conditioned position output",
                  max_error(moved_out[:, :3], out[order, :3] @ rotation.T), dtype) < tol
    assert record("self-conditioned feature output", max_error(moved_out[:, 3:], out[order, 3:]), dtype) < tol
    without = model(torch.cat([pos, features], 1), time, cond)
    assert max_error(without, out) > 1e-3                                    # the estimate is read
    with pytest.raises(ValueError, match="estimate must match"):
        model(torch.cat([pos, features], 1), time, cond, self_condition=estimate[:, :3])
    with pytest.raises(ValueError, match="not self-conditioned"):
        backbones(dtype)["egnn"](torch.cat([pos, features], 1), time, cond, self_condition=estimate)


@pytest.mark.parametrize("name", ["egnn", "e3nn"])
def test_molecules_in_a_batch_do_not_interact(name):
    """A batch of different sizes without padding gives each molecule what it gets alone."""
    model = backbones()[name]
    _, pos, batch = molecules()
    features = torch.randn(len(batch), LATENT, dtype=torch.float64)
    time = torch.full((len(batch),), 300.0, dtype=torch.float64)
    out = model(torch.cat([pos, features], 1), time, MoleculeCondition(batch, fully_connected_edges(batch)))
    for m in range(len(SIZES)):
        rows = batch == m
        alone = torch.zeros(int(rows.sum()), dtype=torch.long)
        single = model(torch.cat([pos[rows], features[rows]], 1), time[rows],
                       MoleculeCondition(alone, fully_connected_edges(alone)))
        assert max_error(single, out[rows]) < 1e-10


def test_condition_dropout_and_unconditional_version():
    model = backbones()["egnn"]
    _, pos, batch = molecules()
    x = torch.cat([pos, torch.randn(len(batch), LATENT, dtype=torch.float64)], 1)
    time = torch.full((len(batch),), 500.0, dtype=torch.float64)
    properties = torch.randn(len(SIZES), 2, dtype=torch.float64)
    cond = MoleculeCondition(batch, fully_connected_edges(batch), properties)
    uncond = cond.unconditional()
    assert not uncond.presence().any() and cond.presence().all()
    nan_props = MoleculeCondition(batch, cond.edge_index, torch.full_like(properties, float("nan")),
                                  torch.zeros(len(SIZES), dtype=torch.bool))
    no_props = MoleculeCondition(batch, cond.edge_index)
    reference = model(x, time, uncond)
    assert not torch.allclose(model(x, time, cond), reference)
    assert torch.equal(model(x, time, nan_props), reference) and torch.equal(model(x, time, no_props), reference)
    draws = torch.rand(len(SIZES), generator=torch.Generator().manual_seed(0))  # CFG dropout, the core's one path
    assert not drop_condition(cond, 1.0, draws, null=None).presence().any()
    assert drop_condition(cond, 0.0, draws, null=None).presence().all()
    half = drop_condition(cond, 0.5, draws, null=None).presence()
    assert torch.equal(half, draws >= 0.5)


def test_posterior_kl_counts_zero_com_degrees_of_freedom():
    _, _, batch = molecules()
    n, sigma2 = len(batch), 0.25
    mean = torch.zeros(n, 3 + LATENT, dtype=torch.float64)
    logvar = torch.full_like(mean, torch.log(torch.tensor(sigma2)).item())
    kl = MoleculePosterior(mean, logvar, batch, len(SIZES)).kl()
    sizes = torch.tensor(SIZES, dtype=torch.float64)
    per_dim = 0.5 * (sigma2 - 1 - torch.log(torch.tensor(sigma2, dtype=torch.float64)))
    assert torch.allclose(kl, per_dim * ((sizes - 1) * 3 + sizes * LATENT))


def test_relative_position_std_floor_scales_with_the_latent():
    """σ_x² = σ_learned² + (r · RMS of the molecule's z_x)²: a floor relative to z_x's own size, which
    an encoder cannot escape by scaling z_x up."""
    _, pos, batch = molecules()
    atom_type = torch.randint(0, 5, (len(batch),), generator=torch.Generator().manual_seed(0))
    edges = fully_connected_edges(batch)
    free = small_autoencoder().to(torch.float64).encode(atom_type, pos, batch, edges, len(SIZES))
    floored = small_autoencoder(min_relative_position_std=0.1).to(torch.float64).encode(
        atom_type, pos, batch, edges, len(SIZES))
    assert torch.allclose(floored.mean, free.mean)
    dof = ((torch.tensor(SIZES, dtype=torch.float64) - 1) * 3).clamp(min=1)  # a lone atom has no z_x spread
    rms = (torch.zeros(len(SIZES), dtype=torch.float64).index_add_(0, batch, free.mean[:, :3].square().sum(1))
           / dof).sqrt()
    expected = free.std[:, :3].square() + (0.1 * rms.clamp_min(1e-6))[batch, None].square()
    assert torch.allclose(floored.std[:, :3].square(), expected, rtol=1e-9)
    assert torch.allclose(floored.std[:, 3:], free.std[:, 3:])


def test_latent_statistics_keep_positions_isotropic_and_centred():
    model = small_autoencoder()
    atom_type, pos, batch = molecules(dtype=torch.float32)
    z = model.encode(atom_type, 4.0 * pos, batch, fully_connected_edges(batch)).mode()
    model.estimate_latent_statistics(z, batch)
    normalised = model.normalize_latent(z)
    assert torch.allclose(model.denormalize_latent(normalised), z, atol=1e-5)
    assert max_error(ZeroCoMSpace(batch=batch).project(normalised), normalised) < 1e-5
    assert model.position_stats.scale.numel() == 1 and model.position_stats.shift.item() == 0.0
    dof = sum((s - 1) * 3 for s in SIZES)
    assert normalised[:, :3].square().sum().item() / dof == pytest.approx(1.0, rel=1e-4)


def test_autoencoder_learns_a_tiny_batch():
    model = small_autoencoder(include_charges=True)
    atom_type, pos, batch = molecules(sizes=(5, 8, 3, 6), seed=4, dtype=torch.float32)
    edges = fully_connected_edges(batch)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(100):
        reconstruction, posterior = model(atom_type, pos, batch, edges, generator=generator)
        terms = molecule_autoencoder_loss(atom_type, pos, batch, reconstruction, posterior,
                                          charges=model.charge_targets(atom_type))
        optimiser.zero_grad()
        terms["total"].backward()
        optimiser.step()
        history.append({k: v.item() for k, v in terms.items()})
    first, last = history[0], history[-1]
    print(f"\nautoencoder: total {first['total']:.3f} -> {last['total']:.3f}, position {first['position']:.3f} -> "
          f"{last['position']:.4f}, accuracy {first['accuracy']:.2f} -> {last['accuracy']:.2f}")
    assert last["total"] < 0.3 * first["total"]
    # EDM's coordinate MLP starts at gain 0.001, so encoder and decoder begin near the identity on
    # positions: the position error is small from step 0 and must stay small while types are learnt
    assert last["position"] < 0.05
    assert last["accuracy"] >= 0.95
    assert set(first) == {"position", "atom_type", "charge", "kl", "total", "accuracy"}


def test_dynamics_fit_the_denoiser_and_guidance_contracts():
    """EGNNDynamics as the raw backbone of shared.diffusion.denoiser.Denoiser (one time per atom row) and under
    classifier-free guidance with the condition's unconditional version; x̂_0 keeps zero CoM."""
    from shared.diffusion.denoiser import Denoiser
    from shared.diffusion.guidance import ClassifierFreeGuidance
    from shared.diffusion.schedules import CosineSchedule

    torch.manual_seed(0)
    denoiser = Denoiser(EGNNDynamics(LATENT, hidden=16, num_blocks=2, property_features=2), CosineSchedule())
    _, _, batch = molecules()
    space = ZeroCoMSpace(batch=batch)
    x_t = space.randn_like(torch.zeros(len(batch), 3 + LATENT))
    t = space.to_rows(torch.rand(len(SIZES), dtype=torch.float64))
    cond = MoleculeCondition(batch, fully_connected_edges(batch), torch.randn(len(SIZES), 2))
    guided = ClassifierFreeGuidance(denoiser, scale=2.0, uncond=cond.unconditional())(x_t, t, cond)
    assert guided.shape == x_t.shape and torch.isfinite(guided).all()
    assert max_error(space.project(guided), guided) < 1e-5
