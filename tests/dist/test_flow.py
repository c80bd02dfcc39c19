"""The rectified-flow transformer (tests/configs/flow_small.py: FlowDiT's seed pieces at the tiny preset on SD-VAE
latents drawn afresh from their posteriors) under ddp, fsdp and DeepSpeed ZeRO-2 on 2 processes: the same weights
and averages after 12 fp32 iterations, and kill -9 then --resume equals the uninterrupted ddp run bitwise."""

import pytest

from tests.data_helpers import make_latents_mds
from tests.dist.test_resume import kill9_resume_and_compare
from tests.helpers import ROOT, export, last_checkpoint, max_abs_diff, train

FLOW = str(ROOT / "tests" / "configs" / "flow_small.py")
AGREE = {"fsdp": ("strategy.type=fsdp",), "zero2": ("strategy.type=deepspeed", "strategy.zero_stage=2")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, ...]:
    return (f"data.train.path={make_latents_mds(tmp_path_factory.mktemp('latents') / 'train', 40)}",)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, data):
    work = tmp_path_factory.mktemp("flow_ddp")
    train(FLOW, work, nproc=2, options=data)
    return work


@pytest.mark.dist
@pytest.mark.parametrize("name", list(AGREE))
def test_strategies_agree_with_ddp(name, ddp_run, data, tmp_path):
    reference = export(last_checkpoint(ddp_run))
    assert any(k.startswith("ema.decay_0.9.") for k in reference) and any(k.startswith("ema.pf_0.050.")
                                                                         for k in reference)
    train(FLOW, tmp_path, nproc=2, options=(*data, *AGREE[name]))
    diff = max_abs_diff(reference, export(last_checkpoint(tmp_path)))
    print(f"{name}: max |w - w_ddp| over weights and averages = {diff:.3g}")
    assert diff < 1e-5


@pytest.mark.dist
def test_kill9_resume_is_bitwise(ddp_run, data, tmp_path):
    # The ddp run above is the uninterrupted reference ('single' reuses the reference it is given).
    diff, _, _ = kill9_resume_and_compare(FLOW, tmp_path, "single", 2, data, ddp_run, interval=6)
    assert diff == 0.0
