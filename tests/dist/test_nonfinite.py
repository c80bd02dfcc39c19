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


def test_abort_after_n_in_a_row(tmp_path):
    out = train(NAN, tmp_path, options=("hooks.0.steps=()", "hooks.0.from_step=4"), check=False)
    assert out.returncode == 1
    assert "error: 3 non-finite steps in a row at step 7 (train_cfg.max_nonfinite_steps=3)" in out.stderr
    assert "Traceback" not in out.stderr
