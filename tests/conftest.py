"""Session-wide test settings."""
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
