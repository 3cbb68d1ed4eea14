"""Text-to-3D by score distillation, measured: seconds per step by part, and ablations on the same prompts and
seeds, each judged from renders of the distilled field (8 views around it, the primitive_views judge) and from
the meshes `mldm sds` exports with each mesh_method (the mesh judge of `mldm evaluate samples_dir=`).

    python benchmarks/text_to_3d.py --run PRIOR_RUN [--prompts 15|5] [--variant NAME:KEY=VALUE,KEY=VALUE ...]
        [--seeds K] [--mesh-methods level_hull ...]

Without --variant: the defaults (SDS, CFG 7.5, Fantasia3D's w(t), no t-annealing, the smoothed voxel grid,
image-space), then VSD, CFG 30 and 100, DreamFusion's (1 − ᾱ) and uniform weightings, sqrt t-annealing, the MLP
field and latent-space SDS. Each judged row also has the object's mean HSV saturation in its views; with --seeds K,
each prompt is distilled at K seeds and the row has the view judge's shape accuracy over them and their
diversity (mean pairwise RMS between their views), ProlificDreamer's comparison of VSD with SDS. Writes a JSON
table to --out (default outputs/text_to_3d/ablations.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modalities.image.data import COLORS  # noqa: E402
from modalities.shape.data import PRIMITIVE_KINDS  # noqa: E402
from modalities.text_to_3d.cameras import light_directions, orbit_cameras, sample_cameras  # noqa: E402
from modalities.text_to_3d.distill import (  # noqa: E402
    DistillSettings, distill, guidance_scale, load_prior, make_particle)
from modalities.text_to_3d.command import build_field, distill_settings, field_spec  # noqa: E402
from modalities.text_to_3d.mesh_judge import judge_meshes, score  # noqa: E402
from modalities.text_to_3d.metrics import evaluate_views  # noqa: E402
from modalities.text_to_3d.sds_output import MESH_METHODS, cut_mesh  # noqa: E402
from modalities.text_to_3d.render import render  # noqa: E402
from shared.diffusion.score_distillation import sds_estimate  # noqa: E402

DEFAULT_VARIANTS = ["default:", "vsd:distillation=vsd", "cfg_30:guidance_scale=30", "cfg_100:guidance_scale=100",
                    "sds_w:weighting=sds", "uniform_w:weighting=uniform", "sqrt_anneal:anneal=sqrt",
                    "mlp_field:field=mlp", "latent_sds:space=latent"]


FIELD_KEYS = ("field", "density_activation", "field_bound", "field_smoothing")   # the field's; the rest DistillSettings'


def prompts(count: int) -> list[str]:
    if count == 15:
        return [f"a {c} {k}" for k in PRIMITIVE_KINDS for c in COLORS]
    return [f"a {COLORS[i % 3]} {k}" for i, k in enumerate(PRIMITIVE_KINDS)]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    pairs = dict(item.split("=", 1) for item in body.split(",") if item)
    return name, pairs


def field_keys(pairs: dict) -> dict:
    """The field's `mldm sds` keys of a variant, defaults as configs/sds.yaml."""
    defaults = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "sds.yaml")
    return {key: yaml.safe_load(pairs[key]) if key in pairs else defaults[key] for key in FIELD_KEYS[1:]}


def settings_of(pairs: dict) -> tuple[DistillSettings, str]:
    """(the settings, typed and checked as `mldm sds sds.KEY=VALUE` would be, the field kind)."""
    values = {key: yaml.safe_load(value) for key, value in pairs.items() if key not in FIELD_KEYS}
    return distill_settings(values), pairs.get("field", "voxel")


def judge_field(field, prompt: str) -> tuple[dict, torch.Tensor]:
    """(the view judge's verdict, the 8 judged views [8, 4, 32, 32]: RGB and opacity)."""
    cameras = orbit_cameras(torch.arange(8) * 45.0, 15.0, 3.0, 45.0)
    with torch.no_grad():
        out = render(field, cameras, 32, 32, shading="lambertian", ambient=0.3, diffuse=0.7)
    images = (out["rgb"].clamp(0, 1) * 255).round().to(torch.uint8)
    return evaluate_views(images, prompts=[prompt] * len(images)), torch.cat([out["rgb"], out["opacity"]], 1)


def saturation(views: torch.Tensor) -> float:
    """Mean HSV saturation (max − min) / max of the object's pixels (opacity ≥ ½) in the judged views."""
    rgb, solid = views[:, :3].clamp(0, 1), views[:, 3] >= 0.5
    high, low = rgb.max(1).values, rgb.min(1).values
    values = ((high - low) / high.clamp_min(1e-6))[solid]
    return round(float(values.mean()), 3) if len(values) else 0.0


def diversity(views_by_seed: list[torch.Tensor]) -> float:
    """Mean pairwise RMS distance between one prompt's judged views (RGB and opacity) over seeds."""
    pairs = [(a - b).pow(2).mean().sqrt() for i, a in enumerate(views_by_seed) for b in views_by_seed[i + 1:]]
    return round(float(torch.stack(pairs).mean()), 4)


def mesh_of(field, settings: DistillSettings, method: str):
    """The mesh `mldm sds mesh_method=METHOD` would export (96³ marching cubes), or None without a surface."""
    try:
        return cut_mesh(field, settings, 96, "cpu", method)[0]
    except ValueError:
        return None


def distil_one(prior, pairs: dict, prompt: str, seed: int):
    """(the field distilled for ``prompt`` at ``seed`` with the variant's keys, the settings, seconds taken)."""
    settings, field_kind = settings_of(pairs)
    field = build_field(field_spec(OmegaConf.create({"field": field_kind, "field_resolution": 64,
                                                      **field_keys(pairs)})))
    start = time.perf_counter()
    distill(prior, field, prompt, settings, seed=seed, particle=make_particle(prior, settings))
    return field, settings, time.perf_counter() - start


def run_variant(prior, name: str, pairs: dict, prompt_list: list[str], seeds: int = 1,
                mesh_methods: tuple[str, ...] = MESH_METHODS) -> dict:
    """Prompt i distilled at seed i (and, with ``seeds`` > 1, at i + 1000 j for j < seeds: judged by views
    only, for the accuracy over seeds and the diversity of each prompt's results)."""
    rows, meshes = [], {method: [] for method in mesh_methods}
    for index, prompt in enumerate(prompt_list):
        field, settings, seconds = distil_one(prior, pairs, prompt, index)
        verdict, views = judge_field(field, prompt)
        for method in mesh_methods:
            meshes[method].append(mesh_of(field, settings, method))
        rows.append({"prompt": prompt, "seconds": round(seconds, 1), **{k: verdict[k] for k in
                     ("valid_rate", "color_accuracy", "shape_accuracy", "prompt_accuracy")},
                     "saturation": saturation(views)})
        if seeds > 1:
            other = [distil_one(prior, pairs, prompt, index + 1000 * j)[0] for j in range(1, seeds)]
            judged = [judge_field(f, prompt) for f in other]
            rows[-1]["shape_accuracy_over_seeds"] = round(
                (verdict["shape_accuracy"] + sum(v["shape_accuracy"] for v, _ in judged)) / seeds, 3)
            rows[-1]["diversity"] = diversity([views] + [v for _, v in judged])
        print(f"{name} {prompt!r}: {rows[-1]}", flush=True)
    mean = (lambda key: round(sum(r[key] for r in rows) / len(rows), 3))
    by_mesh = {}
    for method in mesh_methods:
        verdict = judge_meshes(meshes[method])
        for row, kind, color in zip(rows, verdict["kind"], verdict["color"]):
            row[f"{method}_mesh_kind"], row[f"{method}_mesh_color"] = int(kind), int(color)
        by_mesh[method] = {k: v for k, v in score(verdict, prompt_list).items()
                           if k in ("shape_accuracy", "color_accuracy", "prompt_accuracy")}
    over_seeds = {"shape_accuracy_over_seeds": mean("shape_accuracy_over_seeds"),
                  "diversity": mean("diversity")} if seeds > 1 else {}
    return {"variant": name, "overrides": pairs, "shape_accuracy": mean("shape_accuracy"),
            "color_accuracy": mean("color_accuracy"), "prompt_accuracy": mean("prompt_accuracy"),
            "saturation": mean("saturation"), **over_seeds, "mesh": by_mesh,
            "seconds_per_prompt": mean("seconds"), "prompts": rows}


def part_timings(prior, steps: int = 40) -> dict:
    """Seconds per step of render (forward), encode, denoiser (guided x̂₀), decode and backward, for one
    32×32 view with Lambertian shading and the default voxel field, image-space SDS; and what VSD adds: its
    particle's x̂₀ and second decode (``vsd_particle``), its particle's denoising step, forward and backward
    (``vsd_particle_training``)."""
    settings = DistillSettings()
    particle = make_particle(prior, DistillSettings(distillation="vsd"))
    field = build_field(field_spec(OmegaConf.create({"field": "voxel", "field_resolution": 64, **field_keys({})})))
    generator = torch.Generator().manual_seed(0)
    totals = dict.fromkeys(("render", "encode", "denoiser", "decode", "backward", "vsd_particle",
                            "vsd_particle_training"), 0.0)
    for _ in range(steps):
        cameras = sample_cameras(1, generator)
        clock = time.perf_counter()
        out = render(field, cameras, 32, 32, num_samples=settings.ray_samples, generator=generator,
                     shading="lambertian", light=light_directions(cameras, 30.0, generator))
        images = out["rgb"] * 2 - 1
        totals["render"] += time.perf_counter() - clock
        clock = time.perf_counter()
        with torch.no_grad():
            z = prior.encode(images)
        totals["encode"] += time.perf_counter() - clock
        guided, cond = prior.guided(["a red torus, side view"], guidance_scale(prior, settings))
        clock = time.perf_counter()
        x0, alpha, sigma = sds_estimate(guided, z, torch.tensor([0.5]), torch.randn(z.shape, generator=generator), cond)
        totals["denoiser"] += time.perf_counter() - clock
        clock = time.perf_counter()
        target = prior.decode(x0)
        totals["decode"] += time.perf_counter() - clock
        clock = time.perf_counter()
        (0.5 * (images - target.detach()).pow(2).sum()).backward()
        totals["backward"] += time.perf_counter() - clock
        clock = time.perf_counter()
        x0_particle, _, _ = sds_estimate(particle, z, torch.tensor([0.5]), torch.randn(z.shape, generator=generator),
                                         particle.condition(cond, cameras))
        prior.decode(x0_particle)
        totals["vsd_particle"] += time.perf_counter() - clock
        clock = time.perf_counter()
        particle.loss(z, cond, cameras, generator).backward()
        totals["vsd_particle_training"] += time.perf_counter() - clock
    return {part: round(seconds / steps, 4) for part, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the prior: an image run (experiment=text3d_prior_tiny)")
    parser.add_argument("--prompts", type=int, choices=(5, 15), default=5)
    parser.add_argument("--variant", action="append", help="NAME:KEY=VALUE,... (DistillSettings keys, or field, density_activation, field_bound, field_smoothing)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per prompt (> 1: diversity over seeds too)")
    parser.add_argument("--mesh-methods", nargs="+", choices=MESH_METHODS, default=list(MESH_METHODS),
                        help="the mesh methods to judge (each costs 40 renders and a 96³ marching cubes a prompt)")
    parser.add_argument("--out", default="outputs/text_to_3d/ablations.json")
    args = parser.parse_args()
    prior = load_prior(args.run, "cpu")
    result = {"cpu_bf16": Path("/proc/cpuinfo").read_text().count("avx512_bf16") > 0 if Path("/proc/cpuinfo").exists()
              else None, "threads": torch.get_num_threads(), "seconds_per_step": part_timings(prior), "variants": []}
    print("seconds per step by part:", result["seconds_per_step"], flush=True)
    for text in args.variant or DEFAULT_VARIANTS:
        result["variants"].append(run_variant(prior, *parse_variant(text), prompts(args.prompts), args.seeds,
                                              tuple(args.mesh_methods)))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    for row in result["variants"]:
        meshes = " | ".join(f"{method} meshes: shape {m['shape_accuracy']:.2f} colour {m['color_accuracy']:.2f}"
                            for method, m in row["mesh"].items())
        seeds = (f" | over seeds: shape {row['shape_accuracy_over_seeds']:.2f}, diversity {row['diversity']:.3f}"
                 if "diversity" in row else "")
        print(f"{row['variant']:>14}: views: shape {row['shape_accuracy']:.2f} colour {row['color_accuracy']:.2f} "
              f"prompt {row['prompt_accuracy']:.2f} saturation {row['saturation']:.2f}{seeds} | {meshes} | "
              f"{row['seconds_per_prompt']:.0f} s/prompt")


if __name__ == "__main__":
    main()
