"""Run directories: one writer at a time (an OS lock naming its holder), a user's files never written into,
and a start that fails leaves nothing behind."""
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from shared.errors import RunDirError
from shared.io.run_dir import open_run_dir
from shared.io.run_lock import LOCK_FILE, RunLock


def cfg(run_dir, resume=False):
    return OmegaConf.create({"run_dir": str(run_dir), "resume": resume})


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom shared.io.run_lock import RunLock\n"
                               f"with RunLock({str(tmp_path)!r}, 'train'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"in use by mldm train \(pid {holder.pid} on .*one writer per run"):
            with RunLock(tmp_path, "sample"):
                pass
    finally:
        holder.kill()
        holder.communicate()
    with RunLock(tmp_path, "sample"):  # the kernel dropped the killed holder's lock
        pass


def test_a_killed_holders_lock_is_reported_stale_and_taken_over(tmp_path, capsys):
    (tmp_path / LOCK_FILE).write_text('{"pid": 4242, "host": "h", "command": "train", "since": "then"}')
    with RunLock(tmp_path, "train"):
        pass
    assert "locked by mldm train (pid 4242 on h, since then), which ended without releasing it" in capsys.readouterr().err
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean release leaves no holder on record


def test_a_directory_holding_a_users_files_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(RunDirError, match=r"holds files mldm did not write \(thesis.tex\)"):
        with open_run_dir(cfg(tmp_path)):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    made = tmp_path / "new_run"
    with pytest.raises(ValueError, match="bad data"):
        with open_run_dir(cfg(made)):
            assert (made / "config.yaml").exists()
            raise ValueError("bad data")
    assert not made.exists()
    empty = tmp_path / "users_empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError):
        with open_run_dir(cfg(empty)):
            raise ValueError("bad data")
    assert empty.is_dir() and not list(empty.iterdir())  # the user's directory stays, empty again
    with open_run_dir(cfg(made)):  # so the same command simply runs again
        pass


def test_a_failure_after_a_checkpoint_keeps_the_run_for_resume(tmp_path):
    with pytest.raises(RuntimeError):
        with open_run_dir(cfg(tmp_path / "run")):
            (tmp_path / "run" / "checkpoints" / "a").mkdir()
            (tmp_path / "run" / "checkpoints" / "a" / "step_00000001.json").write_text("{}")
            raise RuntimeError("later")
    assert (tmp_path / "run" / "config.yaml").exists()
    with pytest.raises(RunDirError, match="already holds a run; pass resume=true"):
        with open_run_dir(cfg(tmp_path / "run")):
            pass


def test_sample_and_evaluate_lock_the_run_only_when_writing_into_it_and_leak_no_overwrite(tmp_path):
    from shared.cli.commands import writing_to
    from shared.io import sample_dir

    run = tmp_path / "run"
    with writing_to(OmegaConf.create({"run_dir": str(run), "overwrite": True}), run / "samples" / "x", "sample"):
        assert sample_dir._overwrite.get() and (run / LOCK_FILE).read_text()
        with RunLock(tmp_path / "elsewhere", "sample"):  # another directory is free
            pass
    assert (run / LOCK_FILE).read_text() == "" and not sample_dir._overwrite.get()
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(RunDirError, match="is not a directory"):
        with writing_to(OmegaConf.create({"run_dir": None, "overwrite": True}), tmp_path / "a_file", "sample"):
            pass
    assert not sample_dir._overwrite.get()  # a refusal leaves no overwrite policy behind for the next call
