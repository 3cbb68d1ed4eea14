"""Fuzzing the command line and the sample-directory readers: whatever a user types or leaves in a sample
directory ends in the project's own one-line errors (exit 2), never a traceback, a bug report or a hang."""
import io
import json
import zipfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.cli import main as cli
from shared.errors import UserError
from shared.io.sample_dir import read_arrays, read_index, write_sample_dir

FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KEYS = ["seed", "resume", "run_dir", "num_samples", "steps", "guidance_scale", "batch_size", "strength", "trainer.lr",
        "trainer.max_steps", "trainer.batch_size", "trainer.precision", "trainer.grad_clip", "trainer.ema_decay",
        "stages.autoencoder.max_steps", "stages.diffusion.batch_size", "schedule", "sampler", "sampler.eta",
        "experiment", "export.chain", "export.chain_frames", "source", "split", "nll_steps", "overwrite", "nope"]
VALUES = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr),
                   st.sampled_from(["true", "false", "null", "image_tiny", "sdf_tiny", "ddim", "cosine", "[1,2]",
                                    "{a: 1}", "''", "'", "${x}", "${oc.env:HOME}", "many", "-0", "1e999", "~"]),
                   st.text(max_size=12))
OVERRIDE = st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), VALUES),
                     st.builds(lambda p, k: f"{p}{k}", st.sampled_from(["~", "+", "++", ""]), st.sampled_from(KEYS)),
                     st.text(max_size=20))


@FUZZ
@given(command=st.sampled_from(["train", "sample", "evaluate"]), overrides=st.lists(OVERRIDE, max_size=4))
def test_any_command_line_ends_in_a_config_or_a_one_line_error(capsys, command, overrides):
    code = cli.main([command, *overrides, "--show-config"])
    out, err = capsys.readouterr()
    assert code in (0, 2), f"{overrides}: exit {code}: {err}"
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"mldm {command}: error: "), err
    assert "Traceback" not in err


def _sample_dir(root):
    write_sample_dir(root, [("000000.txt", b"a"), (None, None)], [{"seed": 0}, {"seed": 1}],
                     {"x": np.arange(6.0).reshape(2, 3)})
    return root


@FUZZ
@given(index=st.one_of(st.binary(max_size=200), st.lists(st.one_of(st.text(max_size=30), st.builds(
    json.dumps, st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                             lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                             max_leaves=6))), max_size=4).map(lambda lines: "\n".join(lines).encode())))
def test_any_damaged_index_is_a_named_data_error(tmp_path_factory, index):
    root = _sample_dir(tmp_path_factory.mktemp("s"))
    (root / "samples.jsonl").write_bytes(index)
    try:
        records = read_index(root)
    except UserError as error:
        assert "samples.jsonl" in str(error) and "\n" not in str(error)
    else:
        assert all(isinstance(r, dict) and isinstance(r.get("file"), (str, type(None))) for r in records)


@FUZZ
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
       replace_member=st.booleans())
def test_any_damaged_array_file_is_a_named_data_error(tmp_path_factory, cut, flips, replace_member):
    root = _sample_dir(tmp_path_factory.mktemp("s"))
    path = root / "samples.npz"
    if replace_member:  # a well-formed zip whose member is not an array
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("x.npy", path.read_bytes()[: cut % 64])
        data = bytearray(buffer.getvalue())
    else:
        data = bytearray(path.read_bytes())
        data = data[: cut % (len(data) + 1)] if cut % 3 else data
    for position, value in flips:
        if data:
            data[position % len(data)] ^= value
    path.write_bytes(bytes(data))
    try:
        arrays = read_arrays(root, required=("x",))
    except UserError as error:
        assert "samples.npz" in str(error) and "\n" not in str(error)
    else:
        assert isinstance(arrays["x"], np.ndarray)
