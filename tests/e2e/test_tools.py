"""The tools as a user runs them: dist_train.sh, train.py on the toy config, export, benchmark."""

import json
import subprocess
import sys

import pytest
from PIL import Image
from safetensors import safe_open

from tests.helpers import ROOT, env, export, free_port, last_checkpoint, max_abs_diff, run


@pytest.mark.dist
def test_dist_train_script_two_processes(tmp_path):
    cmd = ["bash", str(ROOT / "tools/dist_train.sh"), str(ROOT / "tests/configs/toy_small.py"), "2",
           "--work-dir", str(tmp_path)]
    proc = subprocess.run(cmd, env=dict(env(), PORT=str(free_port())), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2" in proc.stderr
    assert last_checkpoint(tmp_path).name == "iter_0000010"


def test_train_tool_writes_plot_checkpoints_and_config(tmp_path):
    """tools/train.py on the toy baseline config, shortened: checkpoints, sample plots, metrics, export."""
    run([sys.executable, str(ROOT / "tools/train.py"), str(ROOT / "configs/toy/tree2d_baseline.py"),
         "--work-dir", str(tmp_path), "--cfg-options", "train_cfg.max_iters=40", "checkpoint.interval=20",
         "hooks.2.num_samples=512"])
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_0000020", "iter_0000040"]
    for name in ("raw", "pf_0.050"):
        image = Image.open(tmp_path / "samples" / f"toy_{name}_iter_0000040.png")
        assert image.size[0] > 400 and image.size[1] > 300
    assert "train_cfg = {" in (tmp_path / "config.py").read_text()
    metrics = json.loads((tmp_path / "toy_metrics.json").read_text())["40"]
    assert set(metrics) == {"raw", "pf_0.050"} and 0 <= metrics["raw"]["class_accuracy"] <= 1
    assert (tmp_path / "train.log").read_text().count("step 40/40") == 1
    out = tmp_path / "toy.safetensors"
    printed = run([sys.executable, str(ROOT / "tools/export_checkpoint.py"), str(last_checkpoint(tmp_path)), str(out)])
    assert "averages ['pf_0.050', 'pf_0.100'], step 40" in printed.stdout
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["strategy"]) == "ddp"
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert {"model.net.inp.weight", "ema.pf_0.050.net.inp.weight", "ema.pf_0.100.net.inp.weight"} <= set(weights)
    assert max_abs_diff(weights, export(last_checkpoint(tmp_path))) == 0.0


def test_export_of_a_non_checkpoint_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools/export_checkpoint.py"), str(tmp_path), "x.st"],
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not a diffscale checkpoint (expected model.pt, dcp/ or ds/ inside)" in proc.stderr


def test_benchmark_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "trainer", "ajest", "jest",
                "--batch", "256", "--superbatch", "1024",
                "--steps", "2", "--rounds", "1", "--warmup", "1", "--out", str(out)])
    assert "ratio" in proc.stdout and "train:" not in proc.stderr  # no progress bar in benchmarks
    result = json.loads(out.read_text())
    trainer, ajest, jest = result["trainer"], result["ajest"], result["jest"]
    assert trainer["ratio"] == pytest.approx(trainer["trainer_ms_per_step"] / trainer["bare_ms_per_step"])
    assert ajest["superbatch"] == 1280 and ajest["ideal_ratio"] > 1
    assert ajest["ideal_ratio"] == pytest.approx(1 + (ajest["fwd_learner_B_ms"] + ajest["fwd_ref_B_ms"])
                                                 / ajest["base_ms"])
    assert jest["superbatch"] == 1024 and jest["jest_ms"] > 0 and jest["direct_matrix_ms"] > 0


def test_dmd2_benchmark_ideal_is_the_sum_of_its_passes(tmp_path):
    out = tmp_path / "bench.json"
    run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "dmd2", "--dmd2-batch", "128",
         "--dmd2-cycles", "1", "--rounds", "1", "--out", str(out)])
    d = json.loads(out.read_text())["dmd2"]
    k = d["gen_update_every"]
    ideal = d["G_fwd_bwd_ms"] + d["real_fwd_ms"] + d["fake_fwd_ms"] + k * (d["G_fwd_ms"] + d["fake_fwd_bwd_ms"])
    assert k == 5 and d["ideal_passes_ms"] == pytest.approx(ideal)
    assert d["ratio"] == pytest.approx(d["cycle_ms"] / ideal)
    assert d["ratio_with_adam_and_data"] < d["ratio_with_adam"] < d["ratio"]
