"""DDPM on the 2D tree toy with a learned variance, label dropout and importance-sampled timesteps (the resampler's
history gathered from both ranks every step): the same weights, EMA and timestep history under ddp, fsdp and
deepspeed ZeRO-2 after 10 fp32 steps on 2 processes, and kill -9 then --resume equals an uninterrupted 2-process
run bitwise, history included."""

import pytest
import torch

from tests.dist.test_resume import kill9_resume_and_compare
from tests.helpers import ROOT, export, last_checkpoint, max_abs_diff, train

DDPM = str(ROOT / "tests" / "configs" / "ddpm_small.py")
RESUME = str(ROOT / "tests" / "configs" / "ddpm_resume.py")
AGREE = {"fsdp": ("strategy.type=fsdp",), "zero2": ("strategy.type=deepspeed", "strategy.zero_stage=2")}


def history(ckpt) -> dict[str, torch.Tensor]:
    """The objective's timestep history saved with a checkpoint."""
    return torch.load(ckpt / "trainer.pt", weights_only=True)["objective"]["resampler"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddpm_ddp")
    train(DDPM, work, nproc=2)
    ckpt = last_checkpoint(work)
    return export(ckpt), history(ckpt)


@pytest.mark.dist
def test_ddp_history_is_full_and_used(ddp_run):
    _, hist = ddp_run
    assert int(hist["count"].sum()) == 16 * 2  # every t holds its 2 losses: p is the importance distribution
    second = hist["history"].pow(2).mean(1).sqrt()
    assert float(second.max() / second.min()) > 1.5  # and it is far from uniform


@pytest.mark.dist
@pytest.mark.parametrize("name", list(AGREE))
def test_strategies_agree_with_ddp(name, ddp_run, tmp_path):
    weights, hist = ddp_run
    train(DDPM, tmp_path, nproc=2, options=AGREE[name])
    ckpt = last_checkpoint(tmp_path)
    diff = max_abs_diff(weights, export(ckpt))
    other = history(ckpt)
    hist_diff = float((other["history"] - hist["history"]).abs().max())
    print(f"{name}: max |w - w_ddp| = {diff:.3g}, max |history - history_ddp| = {hist_diff:.3g}")
    assert diff < 1e-5 and hist_diff < 1e-5
    assert torch.equal(other["count"], hist["count"]) and torch.equal(other["ptr"], hist["ptr"])


@pytest.mark.dist
def test_kill9_resume_is_bitwise_with_importance_sampling(tmp_path):
    diff, reference, resumed = kill9_resume_and_compare(RESUME, tmp_path, "ddp", 2, (), tmp_path, interval=6)
    assert diff == 0.0
    a, b = history(last_checkpoint(reference)), history(last_checkpoint(resumed))
    assert all(torch.equal(a[k], b[k]) for k in ("history", "count", "ptr"))
