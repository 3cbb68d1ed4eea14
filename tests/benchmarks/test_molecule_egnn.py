"""The sparse-vs-dense EGNN benchmark in its --quick mode: it runs, writes its JSON and the two
formulations agree. No wall-clock assertions: timings are the benchmark's output, not a property."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "molecule_egnn.py"


def test_quick_run_writes_rows_that_agree(tmp_path):
    spec = importlib.util.spec_from_file_location("molecule_egnn", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        returned = module.main(["--quick", "--out", str(tmp_path), "--repeats", "1", "--device", "cpu"])
    results = json.loads((tmp_path / "molecule_egnn.json").read_text())
    assert results["summary"] == json.loads(json.dumps(returned["summary"]))
    assert json.loads(stdout.getvalue().strip().splitlines()[-1])["mode"] == "quick"
    assert [r["atoms_per_molecule"] for r in results["rows"]] == [18, 50, "qm9"]
    for row in results["rows"]:
        if row["atoms_per_molecule"] != "qm9":  # equal sizes: n(n - 1) edges per molecule
            size = row["atoms_per_molecule"]
            assert row["edges"] == row["molecules"] * size * (size - 1)
        assert row["sparse_molecules_per_s"] > 0 and row["dense_molecules_per_s"] > 0
        assert row["sparse_peak_mb"] > 0 and row["dense_peak_mb"] > 0
        assert row["max_rel_diff"] < 1e-5
    assert results["metrics"]["reference_agrees"] and results["metrics"]["vectorised_molecules_per_s"] > 0
    assert results["distance_expansion"]["gaussians"] == 48 and results["summary"]["distance_gaussians_slowdown"] > 0
