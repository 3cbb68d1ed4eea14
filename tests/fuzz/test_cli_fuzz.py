"""Fuzzing the command line: whatever a user types ends in a resolved config or the project's own one-line
error (exit 2), never a traceback, a bug report or a hang."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.cli import main as cli

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
