"""Parts, phases and batch arithmetic at start-up: each mistake is one line naming the key, exit code 2."""

import sys
import textwrap

import pytest

from diffscale.config import batch_arithmetic
from diffscale.errors import ConfigError
from tests.helpers import ROOT, SMALL

sys.path.insert(0, str(ROOT / "tools"))
import train as train_tool  # noqa: E402

TOY = "dict(type='EDMPrecond', label_dim=2, net=dict(type='ToyMLP', hidden_dim=16, num_layers=2))"


@pytest.mark.parametrize(("batch_size", "batch_gpu", "world", "expected"), [
    (4096, 4096, 1, (4096, 1)),
    (4096, 4096, 2, (2048, 1)),  # the README's multi-GPU example: batch_gpu is the largest micro-batch
    (4096, 4096, 8, (512, 1)),
    (128, 32, 2, (32, 2)),
    (2048, 256, 8, (256, 1)),
    (2048, 64, 8, (64, 4)),
])
def test_batch_gpu_is_the_largest_micro_batch(batch_size, batch_gpu, world, expected):
    assert batch_arithmetic(batch_size, batch_gpu, world) == expected
    got_gpu, accum = expected
    assert got_gpu * accum * world == batch_size


def test_batch_arithmetic_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train_cfg.batch_size: 100 is not divisible by the world size 3"):
        batch_arithmetic(100, 32, 3)
    with pytest.raises(ConfigError, match=r"not a multiple of train_cfg.batch_gpu \* world_size = 24 \* 2 = 48"):
        batch_arithmetic(120, 24, 2)


def run(capsys, tmp_path, body: str, *options: str) -> tuple[int, str]:
    path = tmp_path / "cfg.py"
    path.write_text(textwrap.dedent(body))
    argv = [str(path), "--work-dir", str(tmp_path / "w")] + (["--cfg-options", *options] if options else [])
    code = train_tool.main(argv)
    return code, capsys.readouterr().err.strip()


BASE = f'''_base_ = ["{SMALL}"]
model = None
optimizer = None
lr_schedule = None
'''


@pytest.mark.parametrize(("body", "expected"), [
    (f'_base_ = ["{SMALL}"]\nparts = dict(model=dict(model={TOY}))',
     "parts: a config gives either parts or the one-part shorthand (model, optimizer, lr_schedule), not both; "
     "remove model, optimizer, lr_schedule (or set them to None)"),
    (BASE + f"parts = dict(model=dict(model={TOY}, optimiser=dict(type='Adam')))",
     "parts.model.optimiser: unknown key; expected one of model, optimizer, lr_schedule, grad_clip, trainable, "
     "init (closest: optimizer)"),
    (BASE + f"parts = dict(model=dict(model={TOY}, trainable=['net.*']))",
     "parts.model: trainable=['net.*'] needs an optimizer (a part without one is frozen)"),
    (BASE + f"parts = dict(model=dict(model={TOY}, optimizer=dict(type='Adamm')))",
     "parts.model.optimizer.type: 'Adamm' is not in the optimizer registry; closest: Adam, RAdam, AdamW"),
    (BASE + f"parts = dict(model=dict(model={TOY}, optimizer=dict(type='Adam'), trainable=['net.block.*']))",
     "parts.model.trainable: pattern 'net.block.*' matches no parameter of EDMPrecond"),
    (BASE + f"parts = dict(model=dict(model={TOY}, optimizer=dict(type='Adam'), init=dict(checkpoint='nope')))",
     "reference checkpoint 'nope': no such checkpoint directory, work_dir with last_checkpoint, or .safetensors "
     "file (parts.model.init.checkpoint)"),
    (BASE + f"parts = dict(model=dict(model={TOY}, optimizer=dict(type='Adam')))\n"
            "objective = dict(_delete_=True, type='DMD2Loss')",
     "objective: DMD2Loss needs the parts ['generator', 'fake_score', 'real_score']; the config has ['model'] "
     "(missing ['generator', 'fake_score', 'real_score'])"),
    (BASE + f"parts = dict(model=dict(model={TOY}, optimizer=dict(type='Adam')), teacher=dict(model={TOY}), "
            f"target=dict(model={TOY}))\nobjective = dict(_delete_=True, type='ConsistencyDistillationLoss', "
            "target_decay=0.95)",
     "objective: ConsistencyDistillationLoss asks for the frozen part(s) ['target'] to follow ['model'] after every "
     "step, which this trainer does not do yet (ConsistencyDistillationLoss: use target_decay=0, the CIFAR-10 "
     "recipe's stop-gradient target)"),
    (f'_base_ = ["{SMALL}"]\nhooks = [dict(type="EMAHook"), dict(type="EMAHook", stds=(0.2,))]',
     "hooks: two hooks named EMAHook; give one of them name='...'"),
    (f'_base_ = ["{SMALL}"]\nhooks = [dict(type="EMAHook", part="teacher")]',
     "hooks.EMAHook.teacher.part: 'teacher' is not a trainable part of this run (trainable: model)"),
])
def test_part_mistakes_are_one_line(capsys, tmp_path, body, expected):
    code, err = run(capsys, tmp_path, body)
    assert code == 2, err
    assert err.splitlines()[-1].startswith(f"config error: {expected}"), err  # (after the banner, for hooks)


def test_two_ema_hooks_with_names_load_their_own_state(tmp_path):
    """Hook state is keyed by name: two EMA hooks of one part, named, each keep and restore their own averages."""
    import torch

    body = f'_base_ = ["{SMALL}"]\nhooks = [dict(type="EMAHook", stds=(0.05,), name="fast"), ' \
           'dict(type="EMAHook", stds=(0.2,), name="slow")]\ntrain_cfg = dict(max_iters=4)\n' \
           'checkpoint = dict(interval=2, keep=2)'
    path = tmp_path / "cfg.py"
    path.write_text(body)
    assert train_tool.main([str(path), "--work-dir", str(tmp_path / "w")]) == 0
    ckpt = sorted((tmp_path / "w" / "checkpoints").iterdir())[-1]
    mirrors = torch.load(ckpt / "model.pt", weights_only=True)["mirrors"]
    assert sorted(mirrors) == ["fast/pf_0.050", "slow/pf_0.200"]
    assert sorted(torch.load(ckpt / "trainer.pt", weights_only=True)["hooks"]) == [
        "CheckpointHook", "LoggerHook", "fast", "slow"]
