"""bf16 and fp16 runs under each strategy: finite, close to the fp32 run, and fp16 where DeepSpeed lacks it
fails with one line."""

import pytest
import torch

from tests.helpers import SMALL, export, last_checkpoint, train

pytestmark = pytest.mark.dist

RUNS = {
    "ddp-fp16": ("train_cfg.precision=fp16",),
    "fsdp-bf16": ("train_cfg.precision=bf16", "strategy.type=fsdp"),
    "zero3-bf16": ("train_cfg.precision=bf16", "strategy.type=deepspeed", "strategy.zero_stage=3"),
}


def initial_weights() -> dict:
    """The weights every run starts from: the model built under the config's seed, as the trainer does."""
    from diffscale.config import load_config
    from diffscale.registry import MODELS, build
    from diffscale.utils.seeding import seed_everything

    cfg = load_config(SMALL)
    seed_everything(cfg.train_cfg.seed)
    return {f"model.{k}": v for k, v in build(MODELS, cfg.model, "model").state_dict().items()}


@pytest.mark.parametrize("name", list(RUNS))
def test_mixed_precision_tracks_fp32(name, ddp_reference, tmp_path):
    train(SMALL, tmp_path, nproc=2, options=RUNS[name])
    weights = export(last_checkpoint(tmp_path), tmp_path / "w.safetensors")
    state = torch.load(last_checkpoint(tmp_path) / "trainer.pt", weights_only=True)
    assert state["skipped_steps"] == 0
    model = [k for k in weights if k.startswith("model.") and weights[k].is_floating_point()]
    init = initial_weights()
    # Relative to how far fp32 training moved the weights, reduced precision lands close to the fp32 run.
    moved = sum((ddp_reference[k] - init[k]).norm() ** 2 for k in model) ** 0.5
    deviation = sum((ddp_reference[k] - weights[k]).norm() ** 2 for k in model) ** 0.5
    print(f"{name}: |w - w_fp32| / |w_fp32 - w_init| = {deviation / moved:.3g}")
    assert 0 < deviation < 0.25 * moved
    if "fp16" in name and "ddp" in name:
        assert state["strategy"]["scaler"]["scale"] == 2.0**16  # no overflow on the toy


def test_deepspeed_fp16_where_its_accelerator_lacks_it_is_a_config_error(tmp_path):
    """DeepSpeed's CPU accelerator supports fp16 only where oneDNN has fp16 kernels (it asks
    torch.ops.mkldnn._is_mkldnn_fp16_supported); elsewhere the run stops at start-up with one line. Both outcomes
    are checked: the one this machine has."""
    from deepspeed.accelerator import get_accelerator

    out = train(SMALL, tmp_path, nproc=2, options=("train_cfg.precision=fp16", "strategy.type=deepspeed"),
                check=False)
    accelerator = get_accelerator()
    if accelerator.is_fp16_supported():
        assert out.returncode == 0, out.stderr[-2000:]
        weights = export(last_checkpoint(tmp_path))
        assert all(torch.isfinite(v).all() for v in weights.values())
    else:
        assert out.returncode != 0
        assert (f"config error: train_cfg.precision: DeepSpeed does not support fp16 on this device "
                f"({accelerator.device_name()})") in out.stderr
