"""tools/benchmark.py --suite dmd2_step one_step_vs_heun as a user runs it, at the smallest settings: the DMD2 cycle
goes through the real trainer on CIFAR-10-shaped data, and the figures are consistent with each other (the ideal is
the sum of its timed passes, ratios are the timings' ratios, img/s the batch over the time)."""

import json
import sys

import pytest

from tests.helpers import ROOT, run

TINY = ["--distill-channels", "4", "--distill-blocks", "1", "--distill-resolution", "8", "--distill-rounds", "1",
        "--distill-warmup", "0"]


def test_distill_suites_write_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "dmd2_step", "one_step_vs_heun", *TINY,
         "--distill-batch", "2", "--distill-sample-batch", "2", "--distill-heun-steps", "2", "--out", str(out)],
        timeout=300)
    results = json.loads(out.read_text())
    dmd2, sampling = results["dmd2_step"], results["one_step_vs_heun"]
    assert dmd2["batch"] == 2 and dmd2["resolution"] == 8 and dmd2["gan"] is False and dmd2["gen_update_every"] == 5
    # Three parts of one architecture: EDMPrecond(SongUNet ddpmpp, 4 channels, 1 block, 10 classes).
    assert dmd2["generator_params_M"] == dmd2["fake_score_params_M"] == dmd2["real_score_params_M"] > 0
    k = dmd2["gen_update_every"]
    gen = dmd2["G_fwd_bwd_ms"] + dmd2["real_fwd_ms"] + dmd2["fake_fwd_ms"] + dmd2["adamw_G_ms"]
    fake = dmd2["G_fwd_ms"] + dmd2["fake_fwd_bwd_ms"] + dmd2["adamw_fake_ms"]
    assert dmd2["generator_phase_ideal_ms"] == pytest.approx(gen, rel=1e-9)
    assert dmd2["ideal_ms"] == pytest.approx(gen + k * fake, rel=1e-9)
    assert dmd2["ratio"] == pytest.approx(dmd2["cycle_ms"] / dmd2["ideal_ms"], rel=1e-9)
    assert dmd2["ms_per_iteration"] == pytest.approx(dmd2["cycle_ms"] / k, rel=1e-9)
    assert sampling["heun_nfe"] == 3 and sampling["ideal_speedup"] == 3.0  # 2 Heun steps: no correction at the last
    assert sampling["params_M"] == pytest.approx(dmd2["generator_params_M"], rel=1e-9)  # the same network
    assert sampling["one_step_img_per_s"] == pytest.approx(2 / (sampling["one_step_ms"] / 1e3), rel=1e-9)
    assert sampling["speedup"] == pytest.approx(sampling["heun_ms"] / sampling["one_step_ms"], rel=1e-9)


def test_dmd2_gan_adds_the_head_passes_to_the_ideal(tmp_path):
    out = tmp_path / "bench.json"
    run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "dmd2_step", "--dmd2-gan", *TINY,
         "--distill-batch", "1", "--out", str(out)], timeout=300)
    dmd2 = json.loads(out.read_text())["dmd2_step"]
    assert dmd2["gan"] is True
    assert dmd2["fake_score_params_M"] > dmd2["generator_params_M"]  # FakeScoreWithHead: the score plus its head
    gen = dmd2["G_fwd_bwd_ms"] + dmd2["real_fwd_ms"] + dmd2["fake_fwd_ms"] + dmd2["gan_gen_fwd_bwd_input_ms"] + \
        dmd2["adamw_G_ms"]
    fake = dmd2["G_fwd_ms"] + dmd2["fake_fwd_bwd_ms"] + dmd2["gan_fake_fwd_bwd_ms"] + dmd2["adamw_fake_ms"]
    assert dmd2["ideal_ms"] == pytest.approx(gen + dmd2["gen_update_every"] * fake, rel=1e-9)
