"""DeeDiff heads and probes trained on a frozen U-ViT backbone (the part's `trainable` patterns and `init` from a
plain U-ViT export with the heads allowed missing) under ddp, fsdp and deepspeed ZeRO-2 on 2 processes: the
backbone stays bitwise the checkpoint's, the heads and probes move, and the strategies agree on them."""

import pytest
import torch
from safetensors.torch import save_file

from tests.data_helpers import make_mds
from tests.helpers import ROOT, export, last_checkpoint, max_abs_diff, train

CONFIG = str(ROOT / "tests" / "configs" / "deediff_small.py")
STRATEGIES = {"ddp": (), "fsdp": ("strategy.type=fsdp",),
              "zero2": ("strategy.type=deepspeed", "strategy.zero_stage=2")}
HEADS = ("exit_heads.", "probes.")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[tuple[str, ...], dict]:
    from diffscale.models.uvit import UViT

    root = tmp_path_factory.mktemp("deediff")
    data = make_mds(root / "mds", num_samples=32, shape=(3, 8, 8), num_classes=4)[0]
    torch.manual_seed(0)
    backbone = {f"model.{k}": v.contiguous() for k, v in UViT("tiny").state_dict().items()}
    save_file(backbone, str(root / "uvit.safetensors"))
    options = (f"data.train.path={data}", f"parts.model.init.checkpoint={root / 'uvit.safetensors'}")
    return options, backbone


@pytest.fixture(scope="module")
def ddp_work(inputs, tmp_path_factory):
    work = tmp_path_factory.mktemp("deediff_ddp")
    train(CONFIG, work, nproc=2, options=inputs[0])
    return work


@pytest.fixture(scope="module")
def ddp_weights(ddp_work) -> dict:
    return export(last_checkpoint(ddp_work))


@pytest.mark.dist
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_frozen_backbone_is_unchanged_and_heads_train(name, inputs, ddp_work, ddp_weights, tmp_path):
    options, backbone = inputs
    work = ddp_work
    if name != "ddp":
        work = tmp_path
        out = train(CONFIG, work, nproc=2, options=(*options, *STRATEGIES[name]))
        assert "DeeDiffUViT" in out.stderr
    weights = export(last_checkpoint(work))
    first = export(work / "checkpoints" / "iter_0000001")
    trained = {k: v for k, v in weights.items() if k.startswith("model.")}
    for key, value in backbone.items():  # every backbone tensor: bitwise the checkpoint's
        assert torch.equal(trained[key], value), key
    heads = {k: v for k, v in trained.items() if k[len("model."):].startswith(HEADS)}
    assert heads and set(trained) == set(backbone) | set(heads)
    moved = max(float((first[k] - v).detach().abs().max()) for k, v in heads.items())  # steps 1 -> 3
    assert moved > 1e-4, moved
    assert all(torch.equal(first[k], v) for k, v in backbone.items())
    diff = max_abs_diff(ddp_weights, weights)
    print(f"{name}: max |w - w_ddp| = {diff:.3g}")
    assert diff < 1e-5
