"""bf16 and fp16 runs under each strategy: finite, close to the fp32 run, and fp16 where DeepSpeed lacks it
fails with one line."""

import pytest
import torch

from tests.helpers import SMALL, export, last_checkpoint, train

pytestmark = pytest.mark.dist

RUNS = {
    "ddp-bf16": ("train_cfg.precision=bf16",),
    "ddp-fp16": ("train_cfg.precision=fp16",),
    "fsdp-bf16": ("train_cfg.precision=bf16", "strategy.type=fsdp"),
    "fsdp-fp16": ("train_cfg.precision=fp16", "strategy.type=fsdp"),
    "zero3-bf16": ("train_cfg.precision=bf16", "strategy.type=deepspeed", "strategy.zero_stage=3"),
}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    work = tmp_path_factory.mktemp("fp32")
    train(SMALL, work, nproc=2)
    return export(last_checkpoint(work), work / "w.safetensors")


@pytest.mark.parametrize("name", list(RUNS))
def test_mixed_precision_tracks_fp32(name, fp32, tmp_path):
    train(SMALL, tmp_path, nproc=2, options=RUNS[name])
    weights = export(last_checkpoint(tmp_path), tmp_path / "w.safetensors")
    state = torch.load(last_checkpoint(tmp_path) / "trainer.pt", weights_only=True)
    assert state["skipped_steps"] == 0
    model = [k for k in weights if k.startswith("model.") and weights[k].is_floating_point()]
    # 10 Adam steps of lr 3e-3 move a weight by up to ~3e-2; reduced precision may change that by a fraction.
    moved = max((fp32[k] - weights[k]).abs().max().item() for k in model)
    assert 0 < moved < 1e-2, moved
    if "fp16" in name and "ddp" in name:
        assert state["strategy"]["scaler"]["scale"] == 2.0**16  # no overflow on the toy


@pytest.mark.skipif(torch.cuda.is_available(), reason="DeepSpeed supports fp16 on CUDA; this checks the CPU message")
def test_deepspeed_fp16_on_cpu_is_a_config_error(tmp_path):
    out = train(SMALL, tmp_path, nproc=2, options=("train_cfg.precision=fp16", "strategy.type=deepspeed"),
                check=False)
    assert out.returncode != 0
    assert "config error: train_cfg.precision: DeepSpeed does not support fp16 on this device (cpu)" in out.stderr
