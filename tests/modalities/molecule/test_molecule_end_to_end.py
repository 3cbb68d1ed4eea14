"""The molecule modality through the CLI: `molecule_qm9_tiny` trains both stages (few steps, tiny widths)
with the autoencoder learning atom types, samples the sample-directory contract, evaluates; the data
row, a property-conditional run and fragment-conditioned sampling work; bad input ends in one line
naming it."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

TINY = ["experiment=molecule_qm9_tiny", "device=cpu", "trainer.precision=fp32", "trainer.log_every=2",
        "autoencoder.hidden=16", "autoencoder.decoder_blocks=1", "backbone.hidden=16", "backbone.num_blocks=1",
        "stages.autoencoder.max_steps=100", "stages.autoencoder.batch_size=16", "stages.autoencoder.lr=3.0e-3",
        "stages.autoencoder.warmup_steps=5", "stages.autoencoder.checkpoint_every=0",
        "stages.diffusion.max_steps=10", "stages.diffusion.batch_size=16", "stages.diffusion.checkpoint_every=0",
        "trainer.sample_every=10", "trainer.sample_count=3", "trainer.sample_steps=3"]


def logged(run_dir: Path, stage: str, key: str) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r["stage"] == stage and r[key]]


def last_json(out) -> dict:
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def molecule_run(tmp_path_factory, mldm_process):
    run_dir = tmp_path_factory.mktemp("molecule") / "run"
    out = mldm_process("train", *TINY, f"run_dir={run_dir}")
    assert out.returncode == 0, out.stderr[-4000:]
    return run_dir


def test_training_runs_both_stages_and_the_autoencoder_learns_atom_types(molecule_run):
    for stage in ("autoencoder", "diffusion"):
        checkpoints = sorted((molecule_run / "checkpoints" / stage).glob("step_*.json"))
        assert checkpoints and json.loads(checkpoints[-1].read_text())["complete"], stage
    accuracy = logged(molecule_run, "autoencoder", "accuracy")
    # 5 types; always guessing H (the most common) scores ~0.5
    assert np.mean(accuracy[-3:]) > 0.8 and np.mean(accuracy[:2]) < 0.6, accuracy
    assert all(np.isfinite(logged(molecule_run, "diffusion", "loss")))
    preview = molecule_run / "samples" / "diffusion" / "step_00000010"
    assert (preview / "samples.sdf").exists() and len(list(preview.glob("*.xyz"))) == 3


def test_a_fresh_run_is_a_function_of_the_seed(molecule_run, tmp_path, mldm_process):
    """Initial weights come from the seed too, so a second process reproduces the first run's weights."""
    out = mldm_process("train", *TINY, "stages.diffusion=null", f"run_dir={tmp_path / 'again'}")
    assert out.returncode == 0, out.stderr[-4000:]
    first, again = (sorted((run / "checkpoints" / "autoencoder").glob("step_*.safetensors"))[-1].read_bytes()
                    for run in (molecule_run, tmp_path / "again"))
    assert first == again


def test_sample_and_evaluate_follow_the_contract(molecule_run, tmp_path, mldm_here):
    out = mldm_here("sample", f"run_dir={molecule_run}", "num_samples=5", "steps=4", f"out_dir={tmp_path}",
               "export.chain=true")
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all((tmp_path / r["file"]).exists() and r["seed"] == 0 for r in records)
    arrays = np.load(tmp_path / "samples.npz")
    assert arrays["num_atoms"].tolist() == [r["num_atoms"] for r in records]
    assert arrays["positions"].shape == (arrays["num_atoms"].sum(), 3)
    sdf = Chem.SDMolSupplier(str(tmp_path / "samples.sdf"), removeHs=False, sanitize=False)
    assert [m.GetNumAtoms() for m in sdf] == arrays["num_atoms"].tolist()
    assert (tmp_path / "grid.png").exists() and (tmp_path / "chain.gif").exists()
    metrics = last_json(mldm_here("evaluate", f"run_dir={molecule_run}", f"samples_dir={tmp_path}"))
    assert metrics["n"] == 5
    assert {"atom_stability", "mol_stability", "validity", "uniqueness", "novelty"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("atom_stability", "mol_stability", "validity"))
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 5


def test_data_row_of_the_subset(tmp_path, mldm_here):
    metrics = last_json(mldm_here("evaluate", "experiment=molecule_qm9_tiny", "source=data", "split=val",
                             f"out_dir={tmp_path}"))
    assert metrics["n"] == 500 and metrics["split"] == "val"
    # QM9's own molecules under EDM's bond rule (all of QM9: atom 0.994, molecule 0.953)
    assert metrics["atom_stability"] > 0.98 and metrics["mol_stability"] > 0.9 and metrics["validity"] > 0.95


def test_property_conditional_self_conditioned_training_and_prompted_sampling(tmp_path, mldm_here, mldm_process):
    """CFG on a self-conditioned prior: both guidance branches are fed their previous estimates."""
    run_dir = tmp_path / "run"
    out = mldm_process("train", *TINY, "modality.conditioning.properties=[alpha]", "stages.autoencoder.max_steps=5",
                       "stages.diffusion.max_steps=5", "trainer.sample_every=0", "guidance=cfg", "guidance.scale=2.0",
                       "backbone.self_conditioning=true", f"run_dir={run_dir}")
    assert out.returncode == 0, out.stderr[-4000:]
    out = mldm_here("sample", f"run_dir={run_dir}", "num_samples=2", "steps=3", "prompt=alpha:70.0",
               f"out_dir={tmp_path / 's'}")
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert [r["properties"] for r in records] == [{"alpha": 70.0}] * 2
    out = mldm_here("sample", f"run_dir={run_dir}", "num_samples=2", "prompt=gap:3", f"out_dir={tmp_path / 'x'}")
    assert out.returncode == 2 and "alpha" in out.stderr and "Traceback" not in out.stderr


def test_prompt_for_an_unconditional_run_is_one_clear_error(molecule_run, tmp_path, mldm_here):
    out = mldm_here("sample", f"run_dir={molecule_run}", "num_samples=2", "prompt='alpha=70'", f"out_dir={tmp_path}")
    assert out.returncode == 2 and "unconditional" in out.stderr and "Traceback" not in out.stderr


def test_incomplete_sample_directory_is_one_clear_error(molecule_run, tmp_path, mldm_here):
    out = mldm_here("evaluate", f"run_dir={molecule_run}", f"samples_dir={tmp_path}")
    assert out.returncode == 2 and str(tmp_path) in out.stderr and "Traceback" not in out.stderr


ACETIC_ACID_WITHOUT_METHYL_HYDROGENS = """5
acetic acid (MMFF) without its methyl hydrogens
C -0.95803 -0.09675 0.03168
C 0.47729 0.30587 -0.04791
O 0.90683 1.43655 -0.19770
O 1.31191 -0.74366 0.06587
H 2.20517 -0.34584 -0.00202
"""


def test_fragment_conditioned_sampling_keeps_the_given_atoms(molecule_run, tmp_path, mldm_here):
    fragment = tmp_path / "fragment.xyz"
    fragment.write_text(ACETIC_ACID_WITHOUT_METHYL_HYDROGENS)
    given = np.array([line.split()[1:] for line in ACETIC_ACID_WITHOUT_METHYL_HYDROGENS.splitlines()[2:]], float)
    out = mldm_here("sample", f"run_dir={molecule_run}", "num_samples=3", "steps=4", f"partial={fragment}",
               f"out_dir={tmp_path / 's'}")
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    arrays = np.load(tmp_path / "s" / "samples.npz")
    starts = np.cumsum(arrays["num_atoms"]) - arrays["num_atoms"]
    assert (arrays["num_atoms"] > 5).all()
    for start, record in zip(starts, records):
        kept = arrays["positions"][start:start + 5]
        assert np.allclose(np.linalg.norm(kept[:, None] - kept[None], axis=-1),
                           np.linalg.norm(given[:, None] - given[None], axis=-1), atol=1e-4)
        assert arrays["atom_types"][start:start + 5].tolist() == [1, 1, 3, 3, 0]  # C C O O H
        assert record["fragment_atoms"] == 5 and record["fragment_rmsd"] >= 0.0
    fixed = mldm_here("sample", f"run_dir={molecule_run}", "num_samples=2", "steps=2", f"partial={fragment}",
                 "modality.fragment.num_atoms=8", f"out_dir={tmp_path / 'fixed'}")
    assert fixed.returncode == 0, fixed.stderr[-4000:]
    assert np.load(tmp_path / "fixed" / "samples.npz")["num_atoms"].tolist() == [8, 8]


def test_a_file_of_several_fragments_is_one_clear_error(molecule_run, tmp_path, mldm_here):
    fragment = tmp_path / "fragments.xyz"
    fragment.write_text(ACETIC_ACID_WITHOUT_METHYL_HYDROGENS * 2)
    out = mldm_here("sample", f"run_dir={molecule_run}", "num_samples=2", f"partial={fragment}", f"out_dir={tmp_path / 's'}")
    assert out.returncode == 2 and "give one fragment" in out.stderr and "Traceback" not in out.stderr
