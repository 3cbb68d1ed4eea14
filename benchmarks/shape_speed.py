"""Speed of the 3D-shape modality's geometry code, each piece side by side with its alternative in one run.

1. Chamfer nearest neighbours for the point-cloud VAE's loss: ``point_layers.nearest_index`` (one scipy
   k-d tree per cloud on CPU) vs dense matrices (``torch.cdist(x, y).argmin(-1)``, and the
   |y|² − 2x·y ``baddbmm`` form that ``nearest_index`` uses on GPU; |x|² is dropped, it is constant per
   query), on 16 reconstruction/target pairs of 2048 points. Then the whole loss, forward + backward:
   ``pointcloud_vae.chamfer_loss`` (k-d tree indices, gathered differences) vs ``metrics.chamfer_distance``
   (dense, differentiable). Indices "agree" when equal or, where not, an exact tie at float32 precision
   (the two neighbours' float64 squared distances within 1e-5); losses and gradients must match.
2. Pairwise set metrics: ``metrics.pairwise_chamfer`` (k-d trees) on 32 × 32 clouds of 2048 points with
   1 and 2 worker threads, and ``metrics.pairwise_emd`` (exact assignment) at 128 and 256 points, in pairs/s.
3. Mesh SDF: ``mesh_sdf.signed_distance`` vs ``trimesh.proximity.signed_distance`` (sign flipped: trimesh
   is positive inside) on each primitive kind, 8,192 query points from ``data.sample_sdf``.
4. Marching cubes: ``mesh.extract_mesh`` of an analytic sphere SDF (radius 0.8) at resolution 32/48/64
   (seconds, watertight, volume error), and a fresh ``SDFAutoencoder`` decoder evaluated on a 64³ grid
   in fp32 vs under ``torch.autocast("cpu", torch.bfloat16)`` (seconds, max |ΔSDF|).

Every time is the median over ``--repeats`` calls, the methods of a row interleaved call by call, after
one warm-up call (none in part 2, whose calls are long and average over many pairs). The machine these run
on is shared and noisy: read the ratios, not the absolute times. Clouds are surface samples of the
``data.primitive_mesh`` kinds; reconstructions are fresh samples of the same surface plus N(0, 0.02²) noise.

    python benchmarks/shape_speed.py [--out outputs/benchmarks/shape_speed] [--quick] [--repeats 3]
                                     [--seed 0] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py
from timing import time_side_by_side  # noqa: E402

from modalities.shape.data import (
    PRIMITIVE_KINDS,
    primitive_mesh,
    sample_sdf,
    sample_surface,
)
from modalities.shape.mesh import evaluate_grid, extract_mesh
from modalities.shape.mesh_sdf import signed_distance
from modalities.shape.metrics import chamfer_distance, pairwise_chamfer, pairwise_emd
from modalities.shape.point_layers import nearest_index
from modalities.shape.pointcloud_vae import chamfer_loss
from modalities.shape.sdf_vae import SDFAutoencoder

FULL = {"nn_clouds": 16, "nn_points": 2048, "pair_clouds": 32, "pair_points": 2048, "emd_points": (128, 256),
        "sdf_near": 6144, "sdf_uniform": 2048, "mc_resolutions": (32, 48, 64), "decoder_resolution": 64}
QUICK = {"nn_clouds": 4, "nn_points": 512, "pair_clouds": 8, "pair_points": 256, "emd_points": (128, 256),
         "sdf_near": 1536, "sdf_uniform": 512, "mc_resolutions": (32, 48, 64), "decoder_resolution": 32}
TIE_TOLERANCE = 1e-5     # float64 squared-distance gap under which two different neighbours count as a tie
SPHERE_RADIUS, GRID_BOUND = 0.8, 1.1



def surface_clouds(count: int, points: int, seed: int, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` target clouds [count, points, 3], cycling through the primitive kinds, and as many
    'reconstructions': a fresh sample of the same surface plus Gaussian noise of std ``noise``."""
    rng = np.random.default_rng(seed)
    targets, recons = [], []
    for i in range(count):
        mesh = primitive_mesh(PRIMITIVE_KINDS[i % len(PRIMITIVE_KINDS)], rng)
        targets.append(sample_surface(mesh, points, rng))
        recons.append(sample_surface(mesh, points, rng) + rng.normal(0.0, noise, (points, 3)).astype(np.float32))
    return torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(recons))


def dense_cdist_index(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, y).argmin(-1)


def dense_baddbmm_index(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # nearest_index's GPU branch: |y|² − 2 x·y (|x|² is the same for every candidate of a query)
    return torch.baddbmm(y.square().sum(-1)[:, None], x, y.transpose(1, 2), alpha=-2).argmin(2)


def index_agreement(x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Compare two nearest-neighbour index sets by their float64 squared distances."""
    xd, yd = x.double(), y.double()

    def sq(index):
        return (xd - yd.gather(1, index[..., None].expand(-1, -1, 3))).square().sum(-1)

    gap = sq(other) - sq(reference)   # >= 0 where reference is the true nearest neighbour
    same = reference == other
    return {"index_match_fraction": same.double().mean().item(),
            "max_sq_distance_gap": gap.abs().max().item(),
            "agree": bool((same | (gap.abs() <= TIE_TOLERANCE)).all())}


@torch.no_grad()
def part_nearest(cfg: dict, repeats: int, seed: int) -> dict:
    y, x = surface_clouds(cfg["nn_clouds"], cfg["nn_points"], seed, noise=0.02)   # x: reconstruction
    methods = {"kdtree": lambda: nearest_index(x, y), "cdist": lambda: dense_cdist_index(x, y),
               "baddbmm": lambda: dense_baddbmm_index(x, y)}
    times = time_side_by_side(methods, repeats)
    reference = methods["kdtree"]()
    rows = []
    for name, fn in methods.items():
        row = {"method": name, "ms_per_batch": 1e3 * times[name],
               "kdtree_speedup": times[name] / times["kdtree"]}
        if name != "kdtree":
            row.update(index_agreement(x, y, reference, fn()))
        rows.append(row)
    return {"clouds": cfg["nn_clouds"], "points": cfg["nn_points"], "rows": rows,
            "indices_agree": all(r.get("agree", True) for r in rows)}


def part_loss(cfg: dict, repeats: int, seed: int) -> dict:
    y, x0 = surface_clouds(cfg["nn_clouds"], cfg["nn_points"], seed, noise=0.02)

    def run(loss_fn):
        x = x0.clone().requires_grad_(True)
        per_cloud = loss_fn(x, y)
        per_cloud.mean().backward()
        return per_cloud.detach(), x.grad

    methods = {"kdtree": lambda: run(chamfer_loss), "dense": lambda: run(chamfer_distance)}
    times = time_side_by_side(methods, repeats)
    (kd_value, kd_grad), (dense_value, dense_grad) = methods["kdtree"](), methods["dense"]()
    value_diff = (kd_value - dense_value).abs().max().item()
    grad_diff = (kd_grad - dense_grad).abs().max().item()
    return {"clouds": cfg["nn_clouds"], "points": cfg["nn_points"],
            "kdtree_ms": 1e3 * times["kdtree"], "dense_ms": 1e3 * times["dense"],
            "kdtree_speedup": times["dense"] / times["kdtree"],
            "mean_loss": kd_value.mean().item(), "max_abs_value_diff": value_diff, "max_abs_grad_diff": grad_diff,
            "values_agree": bool(torch.allclose(kd_value, dense_value, rtol=1e-5, atol=1e-7)
                                 and torch.allclose(kd_grad, dense_grad, rtol=1e-4, atol=1e-9))}


def part_pairwise(cfg: dict, repeats: int, seed: int) -> dict:
    a, b = surface_clouds(cfg["pair_clouds"], cfg["pair_points"], seed, noise=0.02)
    pairs = len(a) * len(b)
    out = {"clouds": cfg["pair_clouds"], "points": cfg["pair_points"], "chamfer": [], "emd": []}
    results = {}
    times = time_side_by_side({w: (lambda w=w: results.__setitem__(w, pairwise_chamfer(a, b, workers=w)))
                               for w in (1, 2)}, repeats, warmup=False)
    for workers, seconds in times.items():
        out["chamfer"].append({"workers": workers, "seconds": seconds, "pairs_per_s": pairs / seconds})
    out["chamfer_workers2_speedup"] = times[1] / times[2]
    out["chamfer_workers_identical"] = bool(torch.equal(results[1], results[2]))
    for num_points in cfg["emd_points"]:
        seconds = time_side_by_side({"emd": lambda k=num_points: pairwise_emd(a, b, num_points=k)},
                                    repeats, warmup=False)["emd"]
        out["emd"].append({"num_points": min(num_points, cfg["pair_points"]), "workers": 1, "seconds": seconds,
                           "pairs_per_s": pairs / seconds})
    return out


def part_mesh_sdf(cfg: dict, repeats: int) -> dict:
    rows = []
    for kind in PRIMITIVE_KINDS:
        mesh = primitive_mesh(kind, np.random.default_rng(0))
        points, _ = sample_sdf(mesh, np.random.default_rng(1), near=cfg["sdf_near"], uniform=cfg["sdf_uniform"])
        methods = {"mldm": lambda m=mesh, p=points: signed_distance(m, p),
                   "trimesh": lambda m=mesh, p=points: -trimesh.proximity.signed_distance(m, p)}
        times = time_side_by_side(methods, repeats)
        ours, theirs = methods["mldm"](), methods["trimesh"]()
        rows.append({"kind": kind, "faces": len(mesh.faces), "mldm_ms": 1e3 * times["mldm"],
                     "trimesh_ms": 1e3 * times["trimesh"], "mldm_speedup": times["trimesh"] / times["mldm"],
                     "max_abs_diff": float(np.abs(ours - theirs).max()),
                     "sign_disagreements": int((np.sign(ours) != np.sign(theirs)).sum())})
    return {"query_points": cfg["sdf_near"] + cfg["sdf_uniform"], "rows": rows,
            "max_abs_diff": max(r["max_abs_diff"] for r in rows)}


def sphere_sdf(q: torch.Tensor) -> torch.Tensor:
    return q.norm(dim=-1) - SPHERE_RADIUS


def part_marching_cubes(cfg: dict, repeats: int, seed: int) -> dict:
    rows = []
    exact_volume = 4 / 3 * math.pi * SPHERE_RADIUS**3
    for resolution in cfg["mc_resolutions"]:
        seconds = time_side_by_side({"mc": lambda r=resolution: extract_mesh(sphere_sdf, r, GRID_BOUND)}, repeats)["mc"]
        mesh = extract_mesh(sphere_sdf, resolution, GRID_BOUND)
        rows.append({"resolution": resolution, "seconds": seconds, "faces": len(mesh.faces),
                     "watertight": bool(mesh.is_watertight),
                     "volume_rel_err": float(mesh.volume / exact_volume - 1) if mesh.is_watertight else None})

    torch.manual_seed(seed)
    model = SDFAutoencoder().eval().requires_grad_(False)
    z = torch.randn(1, model.decoder.latent.in_features)
    resolution = cfg["decoder_resolution"]

    def grid(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return evaluate_grid(lambda q: model.decode(z, q[None])[0], resolution, GRID_BOUND)

    times = time_side_by_side({"fp32": lambda: grid(False), "bf16": lambda: grid(True)}, repeats)
    diff = float(np.abs(grid(False) - grid(True)).max())
    decoder = {"resolution": resolution, "queries": resolution**3, "fp32_s": times["fp32"], "bf16_s": times["bf16"],
               "bf16_speedup": times["fp32"] / times["bf16"], "max_abs_diff": diff,
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return {"sphere": rows, "all_watertight": all(r["watertight"] for r in rows), "decoder_grid": decoder}


def print_tables(results: dict) -> None:
    nn, loss = results["nearest_neighbour"], results["chamfer_loss"]
    print(f"\n1. Chamfer nearest neighbours, {nn['clouds']} clouds x {nn['points']} points (ratio = method / kdtree)")
    print(f"{'method':<10} {'ms/batch':>9} {'ratio':>7} {'idx match':>9} {'agree':>6}")
    for r in nn["rows"]:
        match = f"{r['index_match_fraction']:.5f}" if "agree" in r else "ref"
        print(f"{r['method']:<10} {r['ms_per_batch']:>9.2f} {r['kdtree_speedup']:>7.2f} {match:>9} "
              f"{r.get('agree', '')!s:>6}")
    print(f"loss fwd+bwd: chamfer_loss {loss['kdtree_ms']:.2f} ms, chamfer_distance {loss['dense_ms']:.2f} ms, "
          f"ratio {loss['kdtree_speedup']:.2f}; max |Δloss| {loss['max_abs_value_diff']:.2e}, "
          f"max |Δgrad| {loss['max_abs_grad_diff']:.2e}, agree {loss['values_agree']}")

    pw = results["pairwise"]
    print(f"\n2. Pairwise metrics, {pw['clouds']} x {pw['clouds']} clouds of {pw['points']} points")
    print(f"{'metric':<16} {'workers':>7} {'seconds':>8} {'pairs/s':>9}")
    for r in pw["chamfer"]:
        print(f"{'chamfer':<16} {r['workers']:>7} {r['seconds']:>8.3f} {r['pairs_per_s']:>9.1f}")
    for r in pw["emd"]:
        print(f"{'emd@' + str(r['num_points']):<16} {r['workers']:>7} {r['seconds']:>8.3f} {r['pairs_per_s']:>9.1f}")
    print(f"chamfer workers=2 speed-up {pw['chamfer_workers2_speedup']:.2f}")

    sdf = results["mesh_sdf"]
    print(f"\n3. Mesh SDF, {sdf['query_points']} query points (ratio = trimesh / mldm)")
    print(f"{'kind':<9} {'faces':>6} {'mldm ms':>8} {'trimesh ms':>10} {'ratio':>6} {'max|Δ|':>9} {'sign≠':>6}")
    for r in sdf["rows"]:
        print(f"{r['kind']:<9} {r['faces']:>6} {r['mldm_ms']:>8.1f} {r['trimesh_ms']:>10.1f} {r['mldm_speedup']:>6.2f} "
              f"{r['max_abs_diff']:>9.2e} {r['sign_disagreements']:>6}")

    mc = results["marching_cubes"]
    print(f"\n4. Marching cubes, sphere r={SPHERE_RADIUS}")
    print(f"{'resolution':>10} {'seconds':>8} {'faces':>7} {'watertight':>10} {'vol err':>8}")
    for r in mc["sphere"]:
        vol = f"{r['volume_rel_err']:+.4f}" if r["volume_rel_err"] is not None else "-"
        print(f"{r['resolution']:>10} {r['seconds']:>8.3f} {r['faces']:>7} {r['watertight']!s:>10} {vol:>8}")
    d = mc["decoder_grid"]
    print(f"SDFAutoencoder decoder on {d['resolution']}³: fp32 {d['fp32_s']:.3f} s, bf16 autocast {d['bf16_s']:.3f} s, "
          f"ratio {d['bf16_speedup']:.2f}, max |ΔSDF| {d['max_abs_diff']:.2e} ({d['cpu_capability']})")


def _short(value):
    """Floats to 4 significant digits, for the one-line summary."""
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    return float(f"{value:.4g}") if isinstance(value, float) else value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/shape_speed"))
    parser.add_argument("--quick", action="store_true", help="small sizes (used by the tests, a few seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a busy 2-core box extra threads spin-wait)")
    args = parser.parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    cfg = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {"mode": "quick" if args.quick else "full", "config": cfg, "repeats": args.repeats,
               "seed": args.seed, "threads": args.threads}
    results["nearest_neighbour"] = part_nearest(cfg, args.repeats, args.seed)
    results["chamfer_loss"] = part_loss(cfg, args.repeats, args.seed)
    results["pairwise"] = part_pairwise(cfg, args.repeats, args.seed)
    results["mesh_sdf"] = part_mesh_sdf(cfg, args.repeats)
    results["marching_cubes"] = part_marching_cubes(cfg, args.repeats, args.seed)
    results["seconds"] = time.perf_counter() - start
    print_tables(results)

    nn_rows = {r["method"]: r for r in results["nearest_neighbour"]["rows"]}
    sdf_rows = results["mesh_sdf"]["rows"]
    results["summary"] = {
        "mode": results["mode"],
        "nn_kdtree_speedup_vs_cdist": nn_rows["cdist"]["kdtree_speedup"],
        "nn_kdtree_speedup_vs_baddbmm": nn_rows["baddbmm"]["kdtree_speedup"],
        "nn_indices_agree": results["nearest_neighbour"]["indices_agree"],
        "loss_kdtree_speedup": results["chamfer_loss"]["kdtree_speedup"],
        "loss_values_agree": results["chamfer_loss"]["values_agree"],
        "pairwise_chamfer_pairs_per_s": {str(r["workers"]): r["pairs_per_s"] for r in results["pairwise"]["chamfer"]},
        "pairwise_emd_pairs_per_s": {str(r["num_points"]): r["pairs_per_s"] for r in results["pairwise"]["emd"]},
        "sdf_mldm_speedup_geomean": math.exp(statistics.fmean(math.log(r["mldm_speedup"]) for r in sdf_rows)),
        "sdf_max_abs_diff": results["mesh_sdf"]["max_abs_diff"],
        "sphere_meshes_watertight": results["marching_cubes"]["all_watertight"],
        "decoder_bf16_speedup": results["marching_cubes"]["decoder_grid"]["bf16_speedup"],
        "decoder_bf16_max_abs_diff": results["marching_cubes"]["decoder_grid"]["max_abs_diff"],
        "seconds": results["seconds"],
    }
    (args.out / "shape_speed.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(_short(results["summary"])))
    return results


if __name__ == "__main__":
    main()
