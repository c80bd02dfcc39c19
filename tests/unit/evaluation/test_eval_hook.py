"""EvalHook's best-checkpoint bookkeeping: publishing is atomic and leaves one loadable best/, the state
round-trips, and the direction of 'better' follows the metric."""

import json

from diffscale.engine import checkpoint as ckpt
from diffscale.engine.hooks.eval import EvalHook, publish_best
from diffscale.engine.reference import resolve_checkpoint


def fake_checkpoint(work_dir, step: int):
    tmp = ckpt.temp_dir(ckpt.checkpoint_dir(work_dir, step))
    (tmp / "sub").mkdir(parents=True)
    (tmp / "model.pt").write_bytes(bytes([step]) * 100)
    (tmp / "sub" / "part").write_text(f"step {step}")
    ckpt.finalize(tmp, ckpt.checkpoint_dir(work_dir, step), work_dir, keep=1)
    return ckpt.checkpoint_dir(work_dir, step)


def test_publish_best_replaces_the_previous_one(tmp_path):
    first = publish_best(fake_checkpoint(tmp_path, 4), tmp_path, {"metric": "fid", "value": 3.0, "step": 4})
    second_src = fake_checkpoint(tmp_path, 8)  # keep=1 prunes iter_4 from checkpoints/: best/ keeps its files
    assert not ckpt.checkpoint_dir(tmp_path, 4).exists() and ckpt.verify(first) is None
    second = publish_best(second_src, tmp_path, {"metric": "fid", "value": 2.0, "step": 8})
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["best.json", "iter_0000008", ckpt.LAST]
    assert ckpt.verify(second) is None and (second / "sub" / "part").read_text() == "step 8"
    record = json.loads((tmp_path / "best" / "best.json").read_text())
    assert record == {"metric": "fid", "value": 2.0, "step": 8, "checkpoint": str(second)}
    assert resolve_checkpoint(tmp_path / "best") == second  # best/ loads like a work_dir
    assert (second / "model.pt").stat().st_ino == (second_src / "model.pt").stat().st_ino  # hard-linked


def test_state_round_trips_and_modes():
    hook = EvalHook(best_metric="fid")
    hook.best_value, hook.best_step, hook.pending_step = 1.5, 40, 40
    other = EvalHook(best_metric="fid")
    other.load_state_dict(hook.state_dict())
    assert other.state_dict() == {"best_value": 1.5, "best_step": 40, "pending_step": 40}
    assert EvalHook(best_metric="fid").best_mode == "min"
    assert EvalHook(best_metric="top1_acc").best_mode == "max"
    assert EvalHook(best_metric="support_share").best_mode == "max"
    assert EvalHook(best_metric="top1_acc", best_mode="min").best_mode == "min"
