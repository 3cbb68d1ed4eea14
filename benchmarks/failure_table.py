"""Re-tries every row of issue 22's table on tiny real runs: what each bad input or interruption gets,
as exit code and the one line printed. Prints a markdown table (about 3 minutes on 2 CPU cores).

    python benchmarks/failure_table.py [WORK_DIR]
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_IMAGE = ["experiment=image_tiny", "data.num_samples=64", "backbone.width=32", "backbone.depth=1", "device=cpu",
              "trainer.precision=fp32", "trainer.log_every=1"]
TINY_MOLECULE = ["experiment=molecule_qm9_tiny", "autoencoder.hidden=16", "autoencoder.decoder_blocks=1",
                 "backbone.hidden=16", "backbone.num_blocks=1", "device=cpu", "trainer.log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def steps(stages, count, every):
    return [f"stages.{s}.{k}={v}" for s in stages for k, v in
            (("max_steps", count), ("batch_size", 4), ("checkpoint_every", every), ("warmup_steps", 0))]


def mldm(*args, background=False):
    command = [sys.executable, "-m", "shared.cli", *map(str, args)]
    if background:
        return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)


def said(stderr: str) -> str:
    """The lines mldm printed (progress bars and library chatter left out)."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip().startswith("mldm")]
    return " <br> ".join(lines) or "(nothing)"


ROWS = []


def row(tried, done, extra=""):
    ROWS.append((tried, done.returncode, said(done.stderr) + (f" — {extra}" if extra else "")))
    print(f"[{len(ROWS)}] rc={done.returncode} {tried}", file=sys.stderr)


def png(path, value):
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path)


def main(work: Path):
    image, molecule = work / "image", work / "molecule"
    assert mldm("train", *TINY_IMAGE, *steps(["autoencoder", "diffusion"], 4, 2), f"run_dir={image}").returncode == 0
    assert mldm("train", *TINY_MOLECULE, *steps(["autoencoder", "diffusion"], 2, 0), f"run_dir={molecule}").returncode == 0
    sample = ["sample", f"run_dir={image}", "num_samples=2", "steps=2"]

    users = work / "users_dir"
    users.mkdir()
    png(users / "photo.png", 9)
    png(users / "000001.png", 7)
    (users / "samples.jsonl").write_text(json.dumps({"file": "photo.png"}) + "\n")
    before = {p.name: p.read_bytes() for p in users.iterdir()}
    done = mldm(*sample, f"out_dir={users}")
    row("`sample out_dir=D`, D holds a user's photo.png and an old samples.jsonl listing it", done,
        "every file intact" if before == {p.name: p.read_bytes() for p in users.iterdir()} else "FILES CHANGED")
    (users / "samples.jsonl").write_text("{broken\n")
    row("the same with a malformed samples.jsonl in D", mldm(*sample, f"out_dir={users}"))
    row("the same with `overwrite=true` (000001.png is the user's)", mldm(*sample, f"out_dir={users}", "overwrite=true"))

    busy = work / "busy"
    slow = steps(["autoencoder", "diffusion"], 400, 5)
    first = mldm("train", *TINY_IMAGE, *slow, f"run_dir={busy}", background=True)
    deadline = time.time() + 300
    while not list((busy / "checkpoints" / "autoencoder").glob("step_*.json")) and time.time() < deadline:
        time.sleep(0.2)
    row("`train resume=true` while a `train` runs on the same run_dir", mldm("train", f"run_dir={busy}", "resume=true"))
    first.send_signal(signal.SIGKILL)
    first.communicate()
    done = mldm("train", f"run_dir={busy}", "resume=true", "stages.autoencoder.max_steps=12", "stages.diffusion.max_steps=2")
    with open(busy / "logs" / "metrics.csv", newline="") as f:
        twice = sum(n > 1 for n in Counter((r["stage"], r["step"]) for r in csv.DictReader(f)).values())
    row("kill -9 mid-run, then `resume=true`", done, f"metrics.csv rows logged twice: {twice}")

    for override in ("stages.diffusion.max_steps=many", "stages.diffusion.batch_size=-3"):
        row(f"`train ... {override}`", mldm("train", *TINY_IMAGE, override, f"run_dir={work / 'never'}"))

    truncated = work / "truncated"
    shutil.copytree(image, truncated)
    newest = sorted((truncated / "checkpoints" / "diffusion").glob("step_*.safetensors"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    row("newest `.safetensors` truncated, then `sample`",
        mldm("sample", f"run_dir={truncated}", "num_samples=2", "steps=2", f"out_dir={work / 's1'}"))
    no_json = work / "no_json"
    shutil.copytree(image, no_json)
    sorted((no_json / "checkpoints" / "diffusion").glob("step_*.json"))[-1].unlink()
    row("newest checkpoint's `.json` deleted, then `sample`",
        mldm("sample", f"run_dir={no_json}", "num_samples=2", "steps=2", f"out_dir={work / 's2'}"))

    folder = work / "images"
    folder.mkdir()
    for i in range(3):
        png(folder / f"ok{i}.png", 40 * i)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (folder / "empty.png").write_bytes(b"")
    own_data = [*(o for o in TINY_IMAGE if not o.startswith("data.")), "data=image_folder", f"data.root={folder}", *steps(["autoencoder", "diffusion"], 2, 0)]
    done = mldm("train", *own_data, f"run_dir={work / 'own'}")
    row("image folder with a corrupt and a zero-byte PNG", done,
        f"run_dir left behind: {'yes' if (work / 'own').exists() else 'no'}")
    row("the same command again", mldm("train", *own_data, f"run_dir={work / 'own'}"))
    done = mldm("train", *own_data, "data.skip_bad=true", f"run_dir={work / 'own'}")
    log = work / "own" / "logs" / "skipped_inputs.txt"
    row("the same with `data.skip_bad=true`", done,
        f"logs/skipped_inputs.txt: {len(log.read_text().splitlines()) if log.exists() else 0} lines")

    xyz = work / "xyz"
    xyz.mkdir()
    (xyz / "water.xyz").write_text("3\nwater\nO 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n")
    (xyz / "methane.xyz").write_text("5\nmethane\nC 0 0 0\nH 0.63 0.63 0.63\nH -0.63 -0.63 0.63\n"
                                     "H -0.63 0.63 -0.63\nH 0.63 -0.63 -0.63\n")
    (xyz / "bad.xyz").write_text("3\nbad\nO 0.0 0.0 0.0\nH nan 0.0 0.0\nH -0.24 0.93 0.0\n")
    row("NaN coordinates in a training `.xyz`",
        mldm("train", *TINY_MOLECULE, "data=molecule_files", f"data.paths={xyz}",
             *steps(["autoencoder", "diffusion"], 2, 0), f"run_dir={work / 'mol_files'}"))
    fragment = work / "fragment.xyz"
    fragment.write_text("2\nfragment\nC 0.0 0.0 0.0\nO nan 0.0 0.0\n")
    row("NaN in a molecule `partial=` fragment",
        mldm("sample", f"run_dir={molecule}", "num_samples=2", f"partial={fragment}", f"out_dir={work / 's3'}"))
    row("`guidance_scale=1e30`", mldm(*sample, "guidance_scale=1e30", f"out_dir={work / 's4'}"),
        f"out_dir created: {'yes' if (work / 's4').exists() else 'no'}")
    row("`num_samples=0`", mldm("sample", f"run_dir={image}", "num_samples=0", f"out_dir={work / 's5'}"))

    print("| what was tried | exit | what mldm printed |\n|---|---:|---|")
    for tried, code, text in ROWS:
        print(f"| {tried} | {code} | {text.replace('|', '/')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mldm-failures-")))
