"""Session-wide test settings, and `mldm_here`: the CLI run in the test's own process."""
import contextlib
import io
import subprocess

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_intra_op_thread():
    """The suite runs thousands of tiny ops: intra-op threads only add overhead, and on a busy 2-core
    machine two OpenMP threads spin-wait on each other (measured 10-50x slower). Tests that time or
    train something larger can raise it locally."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _mldm_in_process(*args) -> subprocess.CompletedProcess:
    """``mldm`` in this process, for checks that need no fresh interpreter (no kill, no resume): it saves
    each call the ~6 s of importing torch, diffusers and transformers again."""
    from shared.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return subprocess.CompletedProcess(["mldm", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def mldm_here():
    return _mldm_in_process
