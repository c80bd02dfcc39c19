"""tools/benchmark.py --suite deediff_exit as a user runs it, at the smallest settings: real and simulated exit
agree, the exits are mixed, and the figures are consistent with each other (savings are the timings' and the
FLOP table's ratios)."""

import json
import math
import sys

import pytest

from tests.helpers import ROOT, run


def test_deediff_exit_suite_writes_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "deediff_exit", "--deediff-embed-dim", "0",
         "--deediff-depth", "0", "--deediff-heads", "0", "--deediff-resolution", "0", "--deediff-batch", "8",
         "--deediff-steps", "2", "--deediff-rounds", "1", "--deediff-warmup", "0", "--deediff-spread", "2",
         "--out", str(out)], timeout=300)
    r = json.loads(out.read_text())["deediff_exit"]
    assert (r["preset"], r["embed_dim"], r["depth"], r["resolution"], r["batch"], r["steps"]) == ("tiny", 32, 5, 8,
                                                                                                  8, 2)
    assert r["exits_match"] is True and r["real_vs_simulated_max_abs"] <= 1e-5
    assert r["distinct_exits"] >= 2 and 0 < r["layer_ratio"] < 1
    assert r["ideal_saving"] == pytest.approx(1 - r["exit_gflops_per_sample"] / r["plain_gflops"], rel=1e-9)
    assert r["realised_saving"] == pytest.approx(1 - r["real_ms_per_step"] / r["plain_ms_per_step"], rel=1e-9)
    assert r["realised_over_ideal"] == pytest.approx(r["realised_saving"] / r["ideal_saving"], rel=1e-9)
    assert math.isfinite(r["removal_over_ideal"])
    for name in ("plain", "no_exit", "simulated", "real"):
        assert r[f"{name}_ms_per_step"] > 0
