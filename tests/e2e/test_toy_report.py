"""tools/toy_report.py end to end on a tiny budget (the README's main job, shrunk): reference, AJEST learner,
table, curves, sample panels."""

import json
import sys

from tests.helpers import ROOT, run


def test_toy_report_runs_reference_methods_and_writes_the_report(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "tools/toy_report.py"), "--methods", "ajest", "--seeds", "0",
           "--batch", "64", "--iters", "16", "--num-samples", "128", "--out", str(out)]
    proc = run(cmd)
    assert "reference seed 0 (2 steps): training" in proc.stdout
    report = (out / "report.md").read_text()
    assert "| ajest | 1 |" in report
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "samples.png").stat().st_size > 10_000
    # The AJEST learner selected with the seed's reference and was guided by it at the report's weight.
    cfg = (out / "configs" / "ajest_seed0.py").read_text()
    assert cfg.count(str(out / "ref_seed0")) == 2 and "'guidance': 3.0" in cfg
    val = [json.loads(line) for line in (out / "ajest_seed0" / "val_loss.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [0, *range(1, 17)]  # every iters / 32 -> every step
    metrics = json.loads((out / "ajest_seed0" / "toy_metrics.json").read_text())["16"]
    assert set(metrics) == {"raw", "raw_guided_w3", "pf_0.050", "pf_0.050_guided_w3"}
    # A second call finds every run finished and only rewrites the report.
    again = run(cmd)
    assert again.stdout.count("done already") == 2
