"""Sparse (torch-geometric message passing) vs dense padded EGNN, side by side in one run.

The same ``EGNN`` instance runs as sparse message passing over an explicit fully connected edge list
(``modalities.molecule.egnn``) and as the all-pairs padded formulation (``egnn_dense.dense_egnn``,
EDM's own layout) on random molecules of 18 (QM9's mean), 50 and 181 (GEOM-Drugs' largest) atoms,
with a fixed total atom budget per step (molecules = budget // size), and on real QM9 molecules of
mixed sizes (3-29 atoms: the dense layout pads each to the largest). Each step is forward +
backward of a scalar loss on both outputs. Reported per size: molecules/s and peak memory of each
method and their ratios, and the max |Δ| between the two outputs (they must agree). Then the metric
throughput on real QM9 molecules: EDM stability vectorised vs EDM's per-pair loops, and RDKit validity.
Last, what the distance Gaussians of ``egnn_tiny`` cost: the sparse EGNN with and without
``distance_expansion=48`` on the real QM9 batch, side by side; and what self-conditioning costs a
training step of the ``egnn_tiny`` dynamics (with those Gaussians): the plain step, the self-conditioned
step without an estimate, and with the no-grad first pass; at rate r the mean cost is their mix. And the
plain step in fp32 against bf16 autocast at batches of 16 and 64 QM9 molecules.

Time: median over ``--repeats`` calls after one warm-up, the two methods interleaved call by call
(``time_side_by_side``, as in ``shape_speed.py``), on a shared machine: read the ratios.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.
On CPU the caching allocator keeps no statistics and RSS (getrusage) only ever grows, so we replay
the allocation log of ``torch.profiler`` (``profile_memory=True``) for one separate, untimed step:
peak = max over the step of the running sum of allocated minus freed bytes — i.e. the bytes the step
itself holds at its worst moment (inputs and parameters, allocated before, are excluded; the
profiler's warning about blocks "allocated before the profiling started" refers to those).

    python benchmarks/molecule_egnn.py [--out outputs/benchmarks/molecule_egnn] [--quick] [--sizes 18 50 181]
                                       [--atoms 1024] [--hidden 32] [--blocks 2] [--repeats 5]
                                       [--seed 0] [--threads 1] [--device auto]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py
from timing import time_side_by_side  # noqa: E402

from modalities.molecule.condition import MoleculeCondition
from modalities.molecule.data import QM9Dataset
from modalities.molecule.dynamics import EGNNDynamics
from modalities.molecule.egnn import EGNN
from modalities.molecule.egnn_dense import dense_egnn
from modalities.molecule.graphs import fully_connected_edges, to_dense
from modalities.molecule.metrics import molecule_smiles, stability
from modalities.molecule.metrics_reference import reference_stable_atoms

FULL = {"sizes": (18, 50, 181, "qm9"), "atoms": 1024, "metric_molecules": 4000, "reference_molecules": 300,
        "precision_molecules": (16, 64)}
QUICK = {"sizes": (18, 50, "qm9"), "atoms": 128, "metric_molecules": 200, "reference_molecules": 20,
         "precision_molecules": (4,)}
FEATURES = 6     # one-hot of 5 atom types + a charge, like the QM9 encoder's input



def random_molecules(num_molecules: int, size: int, generator: torch.Generator, device):
    """h [B, n, F] (one-hot types + a charge-like scalar), x [B, n, 3] at roughly molecular density."""
    types = torch.randint(0, FEATURES - 1, (num_molecules, size), generator=generator)
    h = torch.cat([torch.nn.functional.one_hot(types, FEATURES - 1).float(), types[..., None] / 10.0], -1)
    x = torch.randn(num_molecules, size, 3, generator=generator) * (0.6 * size ** (1 / 3))
    return h.to(device), x.to(device)


def make_steps(model: EGNN, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
               mask: torch.Tensor | None = None):
    """Padded h [B, N, F], x [B, N, 3] (real atoms where ``mask``): the sparse step runs on the real
    atoms only, the dense one on the padded tensors; both return padded outputs (zeros at padding)."""
    mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask
    h_flat, x_flat = h[mask], x[mask]

    def padded(values):
        out = values.new_zeros(*mask.shape, values.shape[-1])
        out[mask] = values
        return out

    def sparse():
        h_out, x_out = model(h_flat, x_flat, edge_index)
        return padded(h_out), padded(x_out)

    def step(run):
        model.zero_grad(set_to_none=True)
        h_out, x_out = run()
        (h_out[mask].square().mean() + x_out[mask].square().mean()).backward()
        return h_out.detach(), x_out.detach()

    return {"sparse": lambda: step(sparse), "dense": lambda: step(lambda: dense_egnn(model, h, x, mask))}


def synchronised(fn, device):
    def run():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    return run


def peak_bytes(fn, device) -> int:
    """Peak bytes allocated by one call beyond what was allocated before it (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return max(0, max(itertools.accumulate(e.nbytes() for e in events), default=0))


def qm9_batch(num_molecules: int, device):
    """The first ``num_molecules`` training molecules of the committed subset (3-29 atoms), padded."""
    molecules = QM9Dataset("train", source="subset").gather(torch.arange(num_molecules))
    types = molecules.atom_type
    x, _, mask = to_dense(molecules.pos, types, molecules.batch)
    h = torch.zeros(*mask.shape, FEATURES)
    h[mask] = torch.cat([torch.nn.functional.one_hot(types, FEATURES - 1).float(), types[:, None] / 10.0], -1)
    return h.to(device), x.to(device), mask.to(device), fully_connected_edges(molecules.batch).to(device)


def benchmark_size(model: EGNN, size: int | str, atoms: int, repeats: int, seed: int, device) -> dict:
    """One row: ``size`` atoms per molecule (random, equal sizes: dense pads nothing) or ``"qm9"``
    (real QM9 molecules of mixed sizes under the same atom budget: dense pads each to the largest)."""
    if size == "qm9":
        h, x, mask, edge_index = qm9_batch(max(1, atoms // 18), device)
        num_molecules = len(mask)
    else:
        num_molecules = max(1, atoms // size)
        h, x = random_molecules(num_molecules, size, torch.Generator().manual_seed(seed + size), device)
        mask = None
        edge_index = fully_connected_edges(torch.arange(num_molecules, device=device).repeat_interleave(size))
    steps = {name: synchronised(fn, device) for name, fn in make_steps(model, h, x, edge_index, mask).items()}
    times = time_side_by_side(steps, repeats)
    memory = {name: peak_bytes(fn, device) for name, fn in steps.items()}
    (h_sparse, x_sparse), (h_dense, x_dense) = steps["sparse"](), steps["dense"]()
    diff = max((h_sparse - h_dense).abs().max().item(), (x_sparse - x_dense).abs().max().item())
    scale = max(h_sparse.abs().max().item(), x_sparse.abs().max().item())
    row = {"atoms_per_molecule": size, "molecules": num_molecules, "edges": edge_index.shape[1],
           "max_abs_diff": diff, "max_rel_diff": diff / max(scale, 1e-30)}
    for name in steps:
        row[f"{name}_ms"] = 1e3 * times[name]
        row[f"{name}_molecules_per_s"] = num_molecules / times[name]
        row[f"{name}_peak_mb"] = memory[name] / 2**20
    row["sparse_speedup"] = times["dense"] / times["sparse"]          # > 1: sparse is faster
    row["sparse_memory_ratio"] = memory["sparse"] / max(memory["dense"], 1)  # < 1: sparse needs less
    return row


def benchmark_distance_expansion(hidden: int, blocks: int, atoms: int, repeats: int, gaussians: int,
                                 device) -> dict:
    """Sparse fwd+bwd on real QM9 molecules: EDM's edge features [d², d²_in] against those plus
    ``gaussians`` Gaussians of the distance (egnn_tiny's setting); > 1 slowdown: the Gaussians cost."""
    h, x, mask, edge_index = qm9_batch(max(1, atoms // 18), device)
    steps = {}
    for name, count in (("plain", 0), ("gaussians", gaussians)):
        torch.manual_seed(0)
        model = EGNN(FEATURES, hidden, FEATURES, num_blocks=blocks, distance_expansion=count).to(device)
        steps[name] = synchronised(make_steps(model, h, x, edge_index, mask)["sparse"], device)
    times = time_side_by_side(steps, repeats)
    return {"gaussians": gaussians, "plain_ms": 1e3 * times["plain"], "gaussians_ms": 1e3 * times["gaussians"],
            "slowdown": times["gaussians"] / times["plain"]}


def qm9_latents(atoms: int, device) -> tuple[torch.Tensor, torch.Tensor, MoleculeCondition]:
    """Real QM9 molecules (about ``atoms`` atoms) as dynamics inputs: latents [positions, 1 feature], time, graph."""
    molecules = QM9Dataset("train", source="subset").gather(torch.arange(max(1, atoms // 18)))
    batch = molecules.batch.to(device)
    x = torch.cat([molecules.pos, torch.randn(len(batch), 1, generator=torch.Generator().manual_seed(0))], 1)
    return x.to(device), torch.full((len(batch),), 500.0, device=device), MoleculeCondition(batch, fully_connected_edges(batch))


def tiny_dynamics(hidden: int, blocks: int, device, self_conditioning: bool = False) -> EGNNDynamics:
    """``backbone=egnn_tiny``'s dynamics (48 distance Gaussians) at the given size."""
    torch.manual_seed(0)
    return EGNNDynamics(1, hidden, blocks, distance_expansion=48, expansion_cutoff=3.0,
                        self_conditioning=self_conditioning).to(device)


def benchmark_self_conditioning(hidden: int, blocks: int, atoms: int, repeats: int, device,
                                rate: float = 0.5) -> dict:
    """Training-step fwd+bwd of EGNNDynamics on real QM9 molecules (latents: positions + 1 feature):
    plain, self-conditioned without an estimate, and with the no-grad first pass feeding one."""
    x, time, cond = qm9_latents(atoms, device)
    models = {self_conditioning: tiny_dynamics(hidden, blocks, device, self_conditioning)
              for self_conditioning in (False, True)}

    def step(model, first_pass: bool):
        def run():
            model.zero_grad(set_to_none=True)
            kwargs = {}
            if model.self_conditioning:
                estimate = None
                if first_pass:
                    with torch.no_grad():
                        estimate = x + model(x, time, cond)
                kwargs["self_condition"] = estimate
            model(x, time, cond, **kwargs).square().mean().backward()
        return synchronised(run, device)

    times = time_side_by_side({"plain": step(models[False], False), "without_estimate": step(models[True], False),
                               "with_first_pass": step(models[True], True)}, repeats)
    mean = (1 - rate) * times["without_estimate"] + rate * times["with_first_pass"]
    return {"rate": rate, **{f"{name}_ms": 1e3 * value for name, value in times.items()},
            "slowdown_without_estimate": times["without_estimate"] / times["plain"],
            "slowdown_with_first_pass": times["with_first_pass"] / times["plain"],
            "mean_slowdown": mean / times["plain"]}


def benchmark_precision(hidden: int, blocks: int, molecules: tuple[int, ...], repeats: int, device) -> list[dict]:
    """The dynamics' step (fwd+bwd) alone in fp32 against bf16 autocast (``trainer.precision``), per batch
    of ``molecules`` real QM9 molecules. The network only: the training loop around it (data, loss,
    optimizer, EMA) is not timed here, and at batch 16 it dilutes the difference (README)."""
    model, rows = tiny_dynamics(hidden, blocks, device), []
    for count in molecules:
        x, time, cond = qm9_latents(18 * count, device)

        def step(bf16: bool):
            def run():
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = model(x, time, cond).float().square().mean()
                loss.backward()
            return synchronised(run, device)

        times = time_side_by_side({"fp32": step(False), "bf16": step(True)}, repeats)
        rows.append({"molecules": count, "fp32_ms": 1e3 * times["fp32"], "bf16_ms": 1e3 * times["bf16"],
                     "fp32_speedup": times["bf16"] / times["fp32"]})
    return rows


def benchmark_metrics(num_molecules: int, reference_molecules: int) -> dict:
    """Metric throughput on real QM9 molecules (the committed subset): EDM stability vectorised
    (``metrics.stability``) vs EDM's own per-pair loops (``metrics_reference``), and the RDKit part
    of validity (bonds -> Mol -> sanitise -> SMILES), in molecules per second."""
    molecules = QM9Dataset("all", source="subset").gather(torch.arange(num_molecules))
    pos, types, batch = molecules.pos, molecules.atom_type, molecules.batch
    start = time.perf_counter()
    vectorised = stability(pos, types, batch)
    vectorised_s = time.perf_counter() - start
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(batch).cumsum(0)])
    start = time.perf_counter()
    stable = [s for k in range(reference_molecules) for s in reference_stable_atoms(
        pos[offsets[k]:offsets[k + 1]].double().numpy(), types[offsets[k]:offsets[k + 1]].tolist())]
    reference_s = time.perf_counter() - start
    check = stability(pos[:offsets[reference_molecules]], types[:offsets[reference_molecules]],
                      batch[:offsets[reference_molecules]])
    start = time.perf_counter()
    molecule_smiles(pos, types, batch)
    rdkit_s = time.perf_counter() - start
    return {"molecules": num_molecules, "atoms": len(types), "atom_stability": vectorised["atom_stability"],
            "vectorised_molecules_per_s": num_molecules / vectorised_s,
            "reference_molecules_per_s": reference_molecules / reference_s,
            "vectorised_speedup": (num_molecules / vectorised_s) / (reference_molecules / reference_s),
            "reference_agrees": abs(check["atom_stability"] - sum(stable) / len(stable)) < 1e-12,
            "rdkit_validity_molecules_per_s": num_molecules / rdkit_s}


def print_table(results: dict) -> None:
    cfg = results["config"]
    print(f"\nEGNN fwd+bwd, hidden {cfg['hidden']}, {cfg['blocks']} blocks, ~{cfg['atoms']} atoms per step, "
          f"{results['device']} ({results['threads']} thread(s)); memory: {results['memory_method']}")
    print(f"{'atoms':>5} {'mols':>5} {'edges':>8} | {'sparse mol/s':>12} {'dense mol/s':>11} {'speedup':>7} | "
          f"{'sparse MB':>9} {'dense MB':>9} {'mem ratio':>9} | {'max|Δ|':>8} {'rel':>8}")
    for r in results["rows"]:
        print(f"{r['atoms_per_molecule']:>5} {r['molecules']:>5} {r['edges']:>8} | "
              f"{r['sparse_molecules_per_s']:>12.1f} {r['dense_molecules_per_s']:>11.1f} {r['sparse_speedup']:>7.2f} | "
              f"{r['sparse_peak_mb']:>9.1f} {r['dense_peak_mb']:>9.1f} {r['sparse_memory_ratio']:>9.2f} | "
              f"{r['max_abs_diff']:>8.1e} {r['max_rel_diff']:>8.1e}")
    print("speedup = dense time / sparse time; mem ratio = sparse peak / dense peak; "
          "rel = max|Δ| / max|output| (float32 sums over up to 180 neighbours)")
    m = results["metrics"]
    print(f"\nmetrics on {m['molecules']} QM9 molecules: stability {m['vectorised_molecules_per_s']:.0f} mol/s "
          f"vectorised vs {m['reference_molecules_per_s']:.0f} mol/s per-pair loops "
          f"({m['vectorised_speedup']:.0f}x, agree: {m['reference_agrees']}); "
          f"RDKit validity {m['rdkit_validity_molecules_per_s']:.0f} mol/s")
    g = results["distance_expansion"]
    print(f"distance Gaussians ({g['gaussians']}) on the QM9 batch: {g['gaussians_ms']:.1f} ms against "
          f"{g['plain_ms']:.1f} ms without ({g['slowdown']:.2f}x)")
    c = results["self_conditioning"]
    print(f"self-conditioned dynamics step: {c['slowdown_without_estimate']:.2f}x without an estimate, "
          f"{c['slowdown_with_first_pass']:.2f}x with the first pass, {c['mean_slowdown']:.2f}x on average "
          f"at rate {c['rate']} (plain {c['plain_ms']:.1f} ms)")
    for r in results["precision"]:
        print(f"dynamics step, {r['molecules']} QM9 molecules: fp32 {r['fp32_ms']:.1f} ms, bf16 autocast "
              f"{r['bf16_ms']:.1f} ms (fp32 {r['fp32_speedup']:.2f}x as fast)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/molecule_egnn"))
    parser.add_argument("--quick", action="store_true", help="two small sizes, a few seconds (used by the tests)")
    parser.add_argument("--sizes", type=lambda v: v if v == "qm9" else int(v), nargs="+", default=None,
                        help="atoms per molecule, or qm9 (real subset molecules of mixed sizes)")
    parser.add_argument("--atoms", type=int, default=None, help="total atom budget per step")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a busy 2-core box extra threads spin-wait)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    args = parser.parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    preset = QUICK if args.quick else FULL
    sizes, atoms = tuple(args.sizes or preset["sizes"]), args.atoms or preset["atoms"]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    model = EGNN(FEATURES, args.hidden, FEATURES, num_blocks=args.blocks).to(device)
    start = time.perf_counter()
    results = {"mode": "quick" if args.quick else "full", "device": str(device), "threads": args.threads,
               "config": {"sizes": sizes, "atoms": atoms, "hidden": args.hidden, "blocks": args.blocks,
                          "repeats": args.repeats, "seed": args.seed},
               "memory_method": ("torch.cuda.max_memory_allocated - memory_allocated before the step"
                                 if device.type == "cuda" else
                                 "torch.profiler allocation log: peak running sum of bytes allocated by the step"),
               "rows": [benchmark_size(model, size, atoms, args.repeats, args.seed, device) for size in sizes],
               "metrics": benchmark_metrics(preset["metric_molecules"], preset["reference_molecules"]),
               "distance_expansion": benchmark_distance_expansion(args.hidden, args.blocks, atoms, args.repeats,
                                                                  48, device),
               "self_conditioning": benchmark_self_conditioning(args.hidden, args.blocks, atoms, args.repeats,
                                                                device),
               "precision": benchmark_precision(args.hidden, args.blocks, preset["precision_molecules"],
                                                args.repeats, device)}
    results["seconds"] = time.perf_counter() - start
    print_table(results)
    def per_size(key):
        return {str(r["atoms_per_molecule"]): round(r[key], 3) for r in results["rows"]}

    results["summary"] = {
        "mode": results["mode"], "device": results["device"],
        "sparse_speedup": per_size("sparse_speedup"), "sparse_memory_ratio": per_size("sparse_memory_ratio"),
        "max_rel_diff": max(r["max_rel_diff"] for r in results["rows"]),
        "stability_vectorised_speedup": round(results["metrics"]["vectorised_speedup"], 1),
        "distance_gaussians_slowdown": round(results["distance_expansion"]["slowdown"], 3),
        "self_conditioning_mean_slowdown": round(results["self_conditioning"]["mean_slowdown"], 3),
        "fp32_speedup_over_bf16": {str(r["molecules"]): round(r["fp32_speedup"], 3) for r in results["precision"]},
        "seconds": round(results["seconds"], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "molecule_egnn.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"]))
    return results


if __name__ == "__main__":
    main()
