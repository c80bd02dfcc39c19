"""Fixtures shared by every test folder."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny networks and tracing run faster on one intra-op thread than on two fighting over a busy 2-core
    machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
