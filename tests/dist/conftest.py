import pytest

from tests.helpers import SMALL, export, last_checkpoint, train


@pytest.fixture(scope="session")
def ddp_reference(tmp_path_factory) -> dict:
    """Exported weights of tests/configs/toy_small.py: 10 fp32 steps of 2-process DDP, the reference that
    the other strategies and precisions are compared with."""
    work = tmp_path_factory.mktemp("ddp_reference")
    train(SMALL, work, nproc=2)
    return export(last_checkpoint(work), work / "export.safetensors")
