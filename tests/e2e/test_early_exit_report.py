"""The DeeDiff workflow shrunk: the tiny DeeDiff U-ViT trained on a frozen backbone (tests/configs/deediff_small.py),
then tools/early_exit_report.py at thresholds that never exit, always exit at once and mix: rows, costs that
follow the recorded exits, FID and CMMD through the config's evaluators, the plot."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.data_helpers import make_mds
from tests.helpers import ROOT, run, train

T = 50  # timesteps of the shrunk process (the linear schedule needs T >= 20)


def test_train_then_report(tmp_path):
    from diffscale.models.uvit import UViT

    data = make_mds(tmp_path / "mds", num_samples=32, shape=(3, 8, 8), num_classes=4)[0]
    torch.manual_seed(0)
    save_file({f"model.{k}": v.contiguous() for k, v in UViT("tiny").state_dict().items()},
              str(tmp_path / "uvit.safetensors"))
    work = tmp_path / "work"
    train(str(ROOT / "tests/configs/deediff_small.py"), work, options=(
        f"data.train.path={data}", f"parts.model.init.checkpoint={tmp_path / 'uvit.safetensors'}",
        f"objective.num_timesteps={T}", "train_cfg.batch_gpu=4"))
    config = tmp_path / "report_config.py"
    config.write_text(f"_base_ = [{str(ROOT / 'tests/configs/deediff_small.py')!r}]\n"
                      f"evaluators = [dict(type='FID', random_weights=True), "
                      f"dict(type='CMMD', random_weights=True, arch='ViT-B-32')]\n")  # small CLIP: CPU time
    ref = tmp_path / "ref.npz"
    run([sys.executable, str(ROOT / "tools/compute_ref_stats.py"), "--data", str(data), "--out", str(ref),
         "--config", str(config), "--evaluators", "FID", "CMMD"])
    out = tmp_path / "report"
    proc = run([sys.executable, str(ROOT / "tools/early_exit_report.py"), str(config), str(work), "--thresholds",
                "0", "0.5", "1", "--num", "8", "--batch", "4", "--ref", str(ref), "--out", str(out),
                "--cfg-options", f"test_cfg.sampler.num_timesteps={T}"])
    assert "wrote" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["threshold"]: r for r in metrics["rows"]}
    table = metrics["exit_gflops"]
    assert list(rows) == [None, 0.0, 0.5, 1.0] and len(table) == 5 + 1  # tiny: 5 layers, exits 0..5
    assert rows[None]["saving"] == 0 and rows[None]["layer_ratio"] == 1
    # Threshold 1: every sample leaves at exit 0 at every step; threshold 0: none leaves early (layer ratio 1,
    # and the probes cost extra: a negative saving).
    assert rows[1.0]["layer_ratio"] == 0 and rows[1.0]["gflops_per_sample"] == pytest.approx(table[0])
    assert rows[0.0]["layer_ratio"] == 1 and rows[0.0]["gflops_per_sample"] == pytest.approx(table[-1])
    assert rows[0.0]["saving"] < 0 < rows[1.0]["saving"]
    for r in rows.values():
        assert np.isfinite(r["fid"]) and np.isfinite(r["cmmd"]) and r["seconds_real"] > 0
    with Image.open(out / "exit_vs_timestep.png") as image:
        assert min(image.size) > 100
    assert "| no exit |" in (out / "report.md").read_text()
