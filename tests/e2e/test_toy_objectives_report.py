"""tools/toy_objectives_report.py end to end on a tiny budget: the three runs at the same iterations and batch, the
seven rows with their counted NFE, metrics.json and the sample panels. (Reuse of finished runs is distill_report's
`train`, tested by tests/e2e/test_toy_distill_report.py.)"""

import json
import math
import sys

from PIL import Image

from tests.helpers import ROOT, run

ROWS = ("EDM Heun-32", "DDPM DDIM-100 eta 0", "DDPM DDIM-63 eta 0", "DDPM ancestral-1000", "Flow Heun-32",
        "Flow Euler-63", "Flow Euler-stochastic-63")


def test_toy_objectives_report_trains_all_three_and_compares(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "tools/toy_objectives_report.py"), "--iters", "8", "--batch", "128",
           "--num-samples", "256", "--out", str(out)]
    first = run(cmd)
    for name in ("edm", "ddpm", "flow"):
        assert f"{name} (8 iterations): training" in first.stdout
    for name in ("edm", "ddpm", "flow"):  # equal images seen: the same iterations and batch
        cfg = (out / "configs" / f"{name}.py").read_text()
        assert "'max_iters': 8" in cfg and "'batch_size': 128" in cfg
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["rows"]}
    assert list(rows) == list(ROWS)
    # Counted network calls per sample: Heun 2 x 32 - 1, DDIM one per step, ancestral one per timestep, flow Heun
    # 2 per step (its last step is corrected too: v is finite at t = 0), Euler one per step.
    assert [rows[n]["nfe"] for n in ROWS] == [63, 100, 63, 1000, 64, 63, 63]
    for r in rows.values():
        assert 0 <= r["support_share"] <= 1 and 0 <= r["class_accuracy"] <= 1 and math.isfinite(r["sample_seconds"])
    assert metrics["settings"]["iters"] == 8 and metrics["settings"]["batch"] == 128
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert [line.split(" | ")[0].lstrip("| ") for line in table] == list(ROWS)
    with Image.open(out / "samples.png") as image:
        assert min(image.size) > 100
