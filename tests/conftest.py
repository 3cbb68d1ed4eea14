"""Session-wide test settings, and the CLI for tests: `mldm_here` (in the test's own process) and
`mldm_process` (a fresh interpreter, for training runs, kills and resumes)."""
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


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


def _mldm_in_subprocess(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m shared.cli ARGS`` from the repository root: one intra-op thread, nothing fetched."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "shared.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def mldm_process():
    return _mldm_in_subprocess
