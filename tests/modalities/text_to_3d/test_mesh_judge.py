"""The mesh judge: spec primitives are recognised by kind and vertex colour; junk and wrong prompts score 0."""
import json

import numpy as np
import pytest
import trimesh

from modalities.image.data import COLORS
from modalities.shape.data import PRIMITIVE_KINDS, primitive_mesh
from modalities.text_to_3d.mesh_judge import evaluate_samples, judge_meshes, mesh_color, score
from shared.errors import DataError
from shared.io.sample_dir import write_sample_dir

ALBEDOS = np.array([[220, 40, 40], [40, 200, 50], [50, 60, 230]], dtype=np.uint8)   # strong red, green, blue


def _painted(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    mesh.visual.vertex_colors = np.tile(np.r_[np.asarray(rgb, np.uint8), 255], (len(mesh.vertices), 1))
    return mesh


@pytest.fixture(scope="module")
def spec_meshes():
    """3 fresh draws per kind (a seed the bank does not use), axis-aligned as the spec, painted colour i % 3."""
    rng = np.random.default_rng(123)
    meshes, wanted = [], []
    for kind_index, kind in enumerate(PRIMITIVE_KINDS):
        for draw in range(3):
            color = (kind_index + draw) % len(COLORS)
            meshes.append(_painted(primitive_mesh(kind, rng), ALBEDOS[color]))
            wanted.append((color, kind_index))
    return meshes, np.array(wanted)


@pytest.fixture(scope="module")
def spec_verdict(spec_meshes):
    return judge_meshes(spec_meshes[0])


def _prompts(wanted) -> list[str]:
    return [f"a {COLORS[c]} {PRIMITIVE_KINDS[k]}" for c, k in wanted]


def test_spec_meshes_are_recognised(spec_meshes, spec_verdict):
    _, wanted = spec_meshes
    assert (spec_verdict["kind"] == wanted[:, 1]).mean() >= 0.9
    assert (spec_verdict["color"] == wanted[:, 0]).all()
    metrics = score(spec_verdict, _prompts(wanted))
    assert metrics["n"] == len(wanted) and metrics["shape_accuracy"] >= 0.9 and metrics["color_accuracy"] == 1.0
    assert metrics["prompt_accuracy"] >= 0.9 and 0 < metrics["mean_chamfer"] < 0.02


def test_wrong_prompts_score_zero(spec_meshes, spec_verdict):
    _, wanted = spec_meshes
    wrong = np.stack([(wanted[:, 0] + 1) % len(COLORS), (wanted[:, 1] + 1) % len(PRIMITIVE_KINDS)], 1)
    metrics = score(spec_verdict, [p + ", side view" for p in _prompts(wrong)])
    assert metrics["prompt_accuracy"] == 0.0 and metrics["color_accuracy"] == 0.0
    assert metrics["shape_accuracy"] <= 0.1


def test_colour_needs_a_clearly_dominant_channel():
    sphere = primitive_mesh("sphere", np.random.default_rng(0))
    assert mesh_color(_painted(sphere.copy(), [200, 60, 60])) == 0
    assert mesh_color(_painted(sphere.copy(), [60, 60, 200])) == 2
    for unclear in ([128, 128, 128], [230, 220, 20], [150, 110, 0], [0, 0, 0]):   # grey, yellow, 1.36x, black
        assert mesh_color(_painted(sphere.copy(), unclear)) == -1


def test_junk_gets_a_verdict_but_is_far_from_every_primitive(spec_verdict):
    points = np.random.default_rng(5).normal(size=(300, 3)) * [1.0, 0.3, 0.6]
    junk = _painted(trimesh.convex.convex_hull(points), [200, 50, 50])
    verdict = judge_meshes([junk, None])
    assert 0 <= verdict["kind"][0] < len(PRIMITIVE_KINDS) and np.isfinite(verdict["chamfer"][0])
    assert verdict["chamfer"][0] > 2 * np.nanmax(spec_verdict["chamfer"])
    assert verdict["kind"][1] == -1 and verdict["color"][1] == -1 and np.isnan(verdict["chamfer"][1])
    metrics = score(verdict, ["a red sphere", "a red sphere"])     # the missing mesh is wrong on both counts
    assert metrics["color_accuracy"] == 0.5 and metrics["mean_chamfer"] == pytest.approx(verdict["chamfer"][0])


def test_evaluate_samples_reads_an_sds_directory(tmp_path, spec_meshes):
    meshes, wanted = spec_meshes
    picks = [0, 14]                                       # a sphere and a torus
    files = [(f"{i:06d}.ply", meshes[j].export(file_type="ply")) for i, j in enumerate(picks)]
    records = [{"prompt": p, "seed": 0} for p in _prompts(wanted[picks])]
    out = write_sample_dir(tmp_path / "sds", files + [(None, None)], records + [{"prompt": "a red box", "seed": 0}],
                           {}, previews={"sds.json": lambda f: f.write(json.dumps({"run": {}}).encode())})
    metrics = evaluate_samples(out)
    assert set(metrics) == {"n", "shape_accuracy", "color_accuracy", "prompt_accuracy", "mean_chamfer"}
    assert metrics["n"] == 3 and metrics["prompt_accuracy"] == pytest.approx(2 / 3)
    (out / "samples.jsonl").write_text(json.dumps({"file": "000000.ply", "prompt": "a teapot"}) + "\n")
    with pytest.raises(DataError, match="a teapot"):
        evaluate_samples(out)
