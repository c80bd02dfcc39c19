"""Fixtures shared by every test folder."""

import pytest
import torch
import torch.distributed as dist


@pytest.fixture
def one_thread():
    """Tiny networks and tracing run faster on one intra-op thread than on two fighting over a busy 2-core
    machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` for a whole module, module-scoped fixtures included: CPU convolutions differ in their last bits
    between thread counts, so outputs a module compares bitwise must all come from one setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_rank_group():
    """A one-process gloo group (FSDP2 on a single rank), torn down after the test."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
