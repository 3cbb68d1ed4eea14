"""The shape speed benchmark in its --quick mode: it runs, writes every part, and its correctness checks
hold. No wall-clock assertions: the timings are the benchmark's output, not a property to test."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "shape_speed.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("shape_speed", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("shape_speed")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        returned = module.main(["--quick", "--out", str(out), "--repeats", "1"])
    return json.loads((out / "shape_speed.json").read_text()), returned, stdout.getvalue()


def test_json_has_every_part_and_the_summary_line(quick_run):
    results, returned, stdout = quick_run
    assert results["mode"] == "quick"
    for part in ("nearest_neighbour", "chamfer_loss", "pairwise", "mesh_sdf", "marching_cubes", "summary"):
        assert part in results
    assert results["summary"] == json.loads(json.dumps(returned["summary"]))
    assert json.loads(stdout.strip().splitlines()[-1])["mode"] == "quick"
    assert {r["method"] for r in results["nearest_neighbour"]["rows"]} == {"kdtree", "cdist", "baddbmm"}
    assert [r["workers"] for r in results["pairwise"]["chamfer"]] == [1, 2]
    assert [r["num_points"] for r in results["pairwise"]["emd"]] == [128, 256]
    assert all(r["pairs_per_s"] > 0 for r in results["pairwise"]["chamfer"] + results["pairwise"]["emd"])
    assert {r["kind"] for r in results["mesh_sdf"]["rows"]} == {"sphere", "box", "cylinder", "cone", "torus"}
    decoder = results["marching_cubes"]["decoder_grid"]
    assert decoder["fp32_s"] > 0 and decoder["bf16_s"] > 0 and decoder["max_abs_diff"] < 0.1


def test_nearest_neighbour_indices_and_losses_agree(quick_run):
    results = quick_run[0]
    assert results["nearest_neighbour"]["indices_agree"]
    assert all(r["agree"] for r in results["nearest_neighbour"]["rows"] if r["method"] != "kdtree")
    assert results["chamfer_loss"]["values_agree"]
    assert results["pairwise"]["chamfer_workers_identical"]


def test_mesh_sdf_matches_trimesh(quick_run):
    sdf = quick_run[0]["mesh_sdf"]
    assert sdf["max_abs_diff"] < 1e-4
    assert all(r["sign_disagreements"] == 0 for r in sdf["rows"])


def test_sphere_meshes_are_watertight(quick_run):
    spheres = quick_run[0]["marching_cubes"]["sphere"]
    assert [r["resolution"] for r in spheres] == [32, 48, 64]
    assert all(r["watertight"] for r in spheres)
    assert all(abs(r["volume_rel_err"]) < 0.02 for r in spheres)
