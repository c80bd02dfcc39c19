"""tools/benchmark.py --suite flow_step flow_gpu flow_encode as a user runs it, at the smallest settings: the figures
are consistent with each other (ratios are the timings' ratios), and the GPU suite says why it did not run."""

import json
import sys

import pytest
import torch

from tests.helpers import ROOT, run


def test_flow_suites_write_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "flow_step", "flow_gpu", "flow_encode",
         "--flow-preset", "tiny", "--flow-batch", "2", "--flow-steps", "1", "--flow-rounds", "1", "--flow-warmup", "1",
         "--encode-resolution", "16", "--encode-batch", "2", "--out", str(out)], timeout=300)
    results = json.loads(out.read_text())
    step, encode = results["flow_step"], results["flow_encode"]
    assert step["preset"] == "tiny" and step["latent_shape"] == [4, 8, 8] and step["batch"] == 2
    assert step["params_M"] == pytest.approx(0.052016, rel=1e-6)  # the tiny preset (tests/unit/test_flow_dit.py)
    assert step["ratio"] == pytest.approx(step["trainer_ms_per_step"] / step["bare_ms_per_step"], rel=1e-9)
    assert encode["resolution"] == 16 and encode["batch"] == 2
    assert encode["ratio"] == pytest.approx(encode["tool_img_per_s"] / encode["encoder_img_per_s"], rel=1e-9)
    if not torch.cuda.is_available():
        assert results["flow_gpu"] == {"skipped": "no CUDA device"}
