"""tools/benchmark.py --suite ddpm_step uvit_step ddpm_sampler as a user runs it, at the smallest settings: the
figures are consistent with each other (the ratios are the timings' ratios, the resampler's share is of the
trainer step)."""

import json
import sys

import pytest

from tests.helpers import ROOT, run


def test_ddpm_suites_write_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "ddpm_step", "uvit_step", "ddpm_sampler",
         "--ddpm-batch", "2", "--ddpm-resolution", "16", "--ddpm-steps", "1", "--ddpm-rounds", "1",
         "--ddpm-warmup", "1", "--ddpm-sampler-steps", "2", "--out", str(out)], timeout=300)
    results = json.loads(out.read_text())
    step, sampler = results["ddpm_step"], results["ddpm_sampler"]
    assert step["preset"] == "tiny" and step["resolution"] == 16 and step["batch"] == 2
    assert step["params_M"] == pytest.approx(0.636455, rel=1e-6)  # the tiny preset (tests/unit/test_ddpm_unet.py)
    assert step["ratio"] == pytest.approx(step["trainer_ms_per_step"] / step["bare_ms_per_step"], rel=1e-9)
    assert step["resampler_share"] == pytest.approx(step["resampler_ms_per_step"] / step["trainer_ms_per_step"],
                                                    rel=1e-9)
    assert 0 < step["resampler_ms_per_step"] < step["trainer_ms_per_step"]
    uvit = results["uvit_step"]
    assert uvit["model"] == "UViT" and uvit["preset"] == "tiny"
    assert uvit["ratio"] == pytest.approx(uvit["trainer_ms_per_step"] / uvit["bare_ms_per_step"], rel=1e-9)
    assert sampler["steps"] == 2
    for name in ("ddim", "ddpm"):
        assert sampler[f"{name}_ratio"] == pytest.approx(sampler[f"{name}_ms_per_step"] / sampler["net_ms_per_step"],
                                                         rel=1e-9)
