"""skip_bad is never silent: one line with the count, the paths and reasons in the run's log, once."""
from shared.io.skipped_inputs import report_skipped, skipped_inputs_log


def test_skips_are_counted_on_the_terminal_and_listed_in_the_log_once(tmp_path, capsys):
    entries = [(tmp_path / "a.png", "truncated"), (f"{tmp_path / 'm.xyz'}: record 3", "non-finite\ncoordinates")]
    with skipped_inputs_log(tmp_path / "logs" / "skipped_inputs.txt") as log:
        report_skipped(tmp_path, entries)
        report_skipped(tmp_path, entries)  # the next stage builds the same dataset again
    err = capsys.readouterr().err
    assert err == f"mldm: skip_bad: skipped 2 bad input(s) of {tmp_path} (listed in {log})\n"
    assert log.read_text().splitlines() == [f"{tmp_path / 'a.png'}\ttruncated",
                                            f"{tmp_path / 'm.xyz'}: record 3\tnon-finite coordinates"]
    report_skipped(tmp_path / "b", [(tmp_path / "b" / "c.png", "empty")])  # outside a run: the first one named
    assert "skipped 1 bad input(s)" in capsys.readouterr().err and not (tmp_path / "b").exists()
