"""Sparse (torch-geometric message passing) vs dense padded EGNN, side by side in one run.

The same ``EGNN`` instance runs as sparse message passing over an explicit fully connected edge list
(``modalities.molecule.egnn``) and as the all-pairs padded formulation (``egnn_dense.dense_egnn``,
EDM's own layout) on random molecules of 18 (QM9's mean), 50 and 181 (GEOM-Drugs' largest) atoms,
with a fixed total atom budget per step (molecules = budget // size). Each step is forward +
backward of a scalar loss on both outputs. Reported per size: molecules/s and peak memory of each
method and their ratios, and the max |Δ| between the two outputs (they must agree).

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

from modalities.molecule.egnn import EGNN
from modalities.molecule.egnn_dense import dense_egnn

FULL = {"sizes": (18, 50, 181), "atoms": 1024}
QUICK = {"sizes": (18, 50), "atoms": 128}
FEATURES = 6     # one-hot of 5 atom types + a charge, like the QM9 encoder's input



def fully_connected_edges(num_molecules: int, size: int, device) -> torch.Tensor:
    """[2, B·n·(n−1)] all ordered pairs j ≠ i within each molecule of ``size`` consecutive atoms."""
    local = (~torch.eye(size, dtype=torch.bool, device=device)).nonzero().T       # [2, n(n−1)]
    offsets = torch.arange(num_molecules, device=device) * size
    return (local[:, None, :] + offsets[None, :, None]).reshape(2, -1)


def random_molecules(num_molecules: int, size: int, generator: torch.Generator, device):
    """h [B, n, F] (one-hot types + a charge-like scalar), x [B, n, 3] at roughly molecular density."""
    types = torch.randint(0, FEATURES - 1, (num_molecules, size), generator=generator)
    h = torch.cat([torch.nn.functional.one_hot(types, FEATURES - 1).float(), types[..., None] / 10.0], -1)
    x = torch.randn(num_molecules, size, 3, generator=generator) * (0.6 * size ** (1 / 3))
    return h.to(device), x.to(device)


def make_steps(model: EGNN, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor):
    b, n, f = h.shape
    mask = torch.ones(b, n, dtype=torch.bool, device=h.device)
    h_flat, x_flat = h.reshape(-1, f), x.reshape(-1, 3)

    def step(run):
        model.zero_grad(set_to_none=True)
        h_out, x_out = run()
        (h_out.square().mean() + x_out.square().mean()).backward()
        return h_out.detach().reshape(b, n, -1), x_out.detach().reshape(b, n, 3)

    return {"sparse": lambda: step(lambda: model(h_flat, x_flat, edge_index)),
            "dense": lambda: step(lambda: dense_egnn(model, h, x, mask))}


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


def benchmark_size(model: EGNN, size: int, atoms: int, repeats: int, seed: int, device) -> dict:
    num_molecules = max(1, atoms // size)
    generator = torch.Generator().manual_seed(seed + size)
    h, x = random_molecules(num_molecules, size, generator, device)
    edge_index = fully_connected_edges(num_molecules, size, device)
    steps = {name: synchronised(fn, device) for name, fn in make_steps(model, h, x, edge_index).items()}
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/molecule_egnn"))
    parser.add_argument("--quick", action="store_true", help="two small sizes, a few seconds (used by the tests)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="atoms per molecule")
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
               "rows": [benchmark_size(model, size, atoms, args.repeats, args.seed, device) for size in sizes]}
    results["seconds"] = time.perf_counter() - start
    print_table(results)
    def per_size(key):
        return {str(r["atoms_per_molecule"]): round(r[key], 3) for r in results["rows"]}

    results["summary"] = {
        "mode": results["mode"], "device": results["device"],
        "sparse_speedup": per_size("sparse_speedup"), "sparse_memory_ratio": per_size("sparse_memory_ratio"),
        "max_rel_diff": max(r["max_rel_diff"] for r in results["rows"]),
        "seconds": round(results["seconds"], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "molecule_egnn.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"]))
    return results


if __name__ == "__main__":
    main()
