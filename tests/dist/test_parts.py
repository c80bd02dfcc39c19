"""Parts: `trainable` patterns freeze what they say under ddp, fsdp and deepspeed (2 processes), frozen parameters
never enter an optimizer, parameter groups get their lr multiplier."""

import fnmatch

import pytest
import torch

from diffscale.config import load_config, part_specs
from diffscale.registry import MODELS, build
from diffscale.utils.seeding import seed_everything
from tests.helpers import ROOT, export, last_checkpoint, train

PATTERNS = str(ROOT / "tests" / "configs" / "toy_patterns.py")
TRAINABLE = ("net.blocks.0.*", "net.out.*")
STRATEGIES = {
    "ddp": (),
    "fsdp": ("strategy.type=fsdp",),
    "zero2": ("strategy.type=deepspeed", "strategy.zero_stage=2"),
}


def initial_weights() -> dict[str, torch.Tensor]:
    """The weights the trainer starts from: the same seed, then the part built first."""
    cfg = load_config(PATTERNS)
    seed_everything(cfg.train_cfg.seed)
    return build(MODELS, part_specs(cfg)["model"]["model"], "model").state_dict()


@pytest.mark.dist
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_trainable_patterns_freeze_the_rest(name, tmp_path):
    out = train(PATTERNS, tmp_path, nproc=2, options=STRATEGIES[name])
    assert "trainable)" in out.stderr  # the banner counts trainable parameters per part
    weights, init = export(last_checkpoint(tmp_path)), initial_weights()
    moved, frozen = [], []
    for param, start in init.items():
        end = weights[f"model.{param}"]
        (moved if not torch.equal(end, start) else frozen).append(param)
        if not any(fnmatch.fnmatchcase(param, p) for p in TRAINABLE):
            assert torch.equal(end, start), f"{name}: frozen {param} changed"
    assert {p for p in moved} == {p for p in init if any(fnmatch.fnmatchcase(p, t) for t in TRAINABLE)}, moved
    if name == "ddp":  # the optimizer holds the trainable tensors only, in two groups (net.out.* at lr / 10)
        state = torch.load(last_checkpoint(tmp_path) / "model.pt", weights_only=True)["optimizer"]
        trainable = [p for p in init if any(fnmatch.fnmatchcase(p, t) for t in TRAINABLE)]
        assert len(state["state"]) == len(trainable)
        groups = state["param_groups"]
        assert [g["lr_mult"] for g in groups] == [1.0, 0.1]
        assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"], rel=1e-12)
        assert len(groups[1]["params"]) == 2  # net.out.weight, net.out.bias


@pytest.mark.dist
def test_readme_multi_gpu_example_runs(tmp_path):
    """`tools/dist_train.sh configs/toy/tree2d_baseline.py 2` (the README's example with 8): batch_gpu 4096 is the
    largest micro-batch, so on 2 ranks it becomes 2048 and the banner says so."""
    import os
    import subprocess

    from tests.helpers import env, free_port

    cmd = [str(ROOT / "tools" / "dist_train.sh"), str(ROOT / "configs/toy/tree2d_baseline.py"), "2", "--work-dir",
           str(tmp_path), "--cfg-options", "train_cfg.max_iters=2", "hooks=[]"]
    proc = subprocess.run(cmd, env=dict(env(), PORT=str(free_port())), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 4096 = batch_gpu 2048 x accum 1 x world 2 (train_cfg.batch_gpu 4096 is more than batch_size / " \
           "world_size: using 2048)" in proc.stderr
    assert last_checkpoint(tmp_path).name == "iter_0000002" and os.path.isfile(last_checkpoint(tmp_path) / "model.pt")
