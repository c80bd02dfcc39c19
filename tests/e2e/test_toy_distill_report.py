"""tools/toy_distill_report.py end to end on a tiny budget: teacher, DMD2 distillation, the four-row table,
metrics.json, the sample panels, and reuse of finished runs by a second call."""

import json
import math
import re
import sys
import time

from PIL import Image

from tests.helpers import ROOT, run

ROWS = ("teacher Heun-32", "teacher Heun-1", "generator EMA pf_0.050", "generator raw")


def test_toy_distill_report_trains_distils_and_reports(tmp_path):
    out = tmp_path / "distill"
    cmd = [sys.executable, str(ROOT / "tools/toy_distill_report.py"), "--teacher-iters", "64", "--iters", "40",
           "--batch", "256", "--num-samples", "512", "--out", str(out)]
    t0 = time.perf_counter()
    first = run(cmd)
    first_s = time.perf_counter() - t0
    assert "teacher (64 iterations): training" in first.stdout and "dmd2 (40 iterations): training" in first.stdout
    # The DMD2 run was initialised from this teacher and shrunk as asked.
    cfg = (out / "configs" / "dmd2.py").read_text()
    assert cfg.count(str(out / "teacher")) == 3 and "'max_iters': 40" in cfg and "'batch_size': 256" in cfg
    assert (out / "dmd2" / "last_checkpoint").read_text().strip().endswith("iter_0000040")

    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")][2:]
    assert [line.split(" | ")[0].lstrip("| ") for line in table] == list(ROWS)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["rows"]}
    assert list(rows) == list(ROWS)
    assert [rows[n]["nfe"] for n in ROWS] == [63, 1, 1, 1]  # 2 * 32 - 1 Heun evaluations; one step for the rest
    for r in rows.values():
        assert 0 <= r["support_share"] <= 1 and 0 <= r["class_accuracy"] <= 1
        assert math.isfinite(r["sample_seconds"]) and r["sample_seconds"] > 0
    assert rows["generator raw"]["denoiser"] is None  # the denoiser losses mean nothing for a generator
    assert math.isfinite(rows["teacher Heun-32"]["denoiser"]["outer_loss"])
    assert metrics["settings"]["dmd2_iters"] == 40 and metrics["settings"]["num_samples"] == 512
    with Image.open(out / "samples.png") as image:
        image.verify()
    with Image.open(out / "samples.png") as image:
        assert min(image.size) > 100

    # A second call reuses both finished runs: no training, only the evaluation.
    t0 = time.perf_counter()
    again = run(cmd)
    assert again.stdout.count("done already") == 2 and "training ..." not in again.stdout
    assert time.perf_counter() - t0 < first_s
    assert json.loads((out / "metrics.json").read_text())["rows"][0]["support_share"] == rows[ROWS[0]]["support_share"]


def test_a_failed_training_names_the_run_and_its_output(tmp_path):
    from diffscale.evaluation import distill_report as D

    out = tmp_path / "distill"
    # A teacher that looks finished (same resolved config, last_checkpoint at its max_iters) but holds no weights:
    # the DMD2 run fails loading its init.
    D.write_config("teacher", D.TEACHER_CONFIG, D.teacher_options(8, 0), out)
    ckpt = out / "teacher" / "checkpoints" / "iter_0000008"
    ckpt.mkdir(parents=True)
    (out / "teacher" / "last_checkpoint").write_text(f"{ckpt}\n")
    cmd = [sys.executable, str(ROOT / "tools/toy_distill_report.py"), "--teacher-iters", "8", "--iters", "4",
           "--batch", "64", "--num-samples", "64", "--out", str(out)]
    proc = run(cmd, check=False)
    assert proc.returncode == 1
    assert "teacher (8 iterations): done already" in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"dmd2 \(4 iterations\) failed \(exit \d+\); its output: {out}/dmd2.out",
                                            lines[0])
    # The trainer's own error names the teacher work_dir, whose only checkpoint is empty (it has no manifest).
    assert f"work_dir '{out / 'teacher'}' holds no complete checkpoint" in (out / "dmd2.out").read_text()
    assert not (out / "report.md").exists()


def test_a_bad_option_is_one_config_error_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools/toy_distill_report.py"), "--teacher-iters", "0", "--out", str(tmp_path)]
    proc = run(cmd, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["config error: train_cfg.max_iters: expected a positive integer, got 0"]
    assert not (tmp_path / "teacher").exists()
