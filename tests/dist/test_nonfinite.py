"""A non-finite loss skips the step and is counted; N in a row abort with a clear message."""

import pytest
import torch

from tests.helpers import ROOT, export, last_checkpoint, train

NAN = str(ROOT / "tests" / "configs" / "toy_nan.py")


def trainer_state(work_dir):
    return torch.load(last_checkpoint(work_dir) / "trainer.pt", weights_only=True)


@pytest.mark.parametrize("strategy", [
    pytest.param((1, ()), id="single"),
    pytest.param((2, ("strategy.type=deepspeed", "strategy.zero_stage=2")), id="zero2", marks=pytest.mark.dist),
])
def test_nan_steps_are_skipped_and_counted(tmp_path, strategy):
    nproc, options = strategy
    out = train(NAN, tmp_path, nproc=nproc, options=options)
    assert trainer_state(tmp_path)["skipped_steps"] == 2
    assert out.stderr.count("non-finite loss or gradient, step skipped") == 2
    weights = export(last_checkpoint(tmp_path), tmp_path / "w.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())  # NaN never reached the weights or EMA


def error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr[-2000:]
    return lines[0]


def test_abort_after_n_in_a_row(tmp_path):
    """NaN from step 5 on: the checkpoint of step 5 holds the count (1 in a row), so the run aborts at step 7 both
    uninterrupted and when resumed from it; the message names that checkpoint."""
    options = ("hooks.0.steps=()", "hooks.0.from_step=4")
    out = train(NAN, tmp_path, options=options, check=False)
    assert out.returncode == 1
    newest = (tmp_path / "checkpoints" / "iter_0000005").resolve()
    assert error_line(out) == (
        f"error: 3 non-finite steps in a row at step 7 (train_cfg.max_nonfinite_steps=3): lower the learning rate, "
        f"check the data, or resume from {newest}")
    assert "Traceback" not in out.stderr
    assert trainer_state(tmp_path)["nonfinite_in_a_row"] == 1
    resumed = train(NAN, tmp_path, options=options, extra=("--resume",), check=False)
    assert resumed.returncode == 1 and "non-finite steps in a row at step 7" in resumed.stderr  # not at step 8


def test_abort_before_any_checkpoint_names_none(tmp_path):
    out = train(NAN, tmp_path, options=("hooks.0.steps=()", "hooks.0.from_step=0"), check=False)
    assert out.returncode == 1
    assert error_line(out).endswith("check the data, (no checkpoint was saved yet)")
