"""tools/toy_objectives_report.py end to end on a tiny budget: the three runs at the same iterations and batch, the
seven rows with their counted NFE, metrics.json and the sample panels. (Reuse of finished runs is distill_report's
`train`, tested by tests/e2e/test_toy_distill_report.py.)"""

import json
import math
import sys

from PIL import Image

from tests.dist.test_curation import scalars
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
    _ajest_on_flow(out, tmp_path)


def _ajest_on_flow(out, tmp_path):
    """The flow objective's sample_condition / per_example serve curation and validation as EDM's do: AJEST on the
    flow toy with the report's flow run as the reference (scores of learner and reference on the same t and
    noise), validated on held-out data, logs its curation figures."""
    config = tmp_path / "flow_ajest.py"
    model = "dict(type='DDPMNet', label_dim=2, time_scale=1.0, net=dict(type='ToyMLP', in_dim=2, num_classes=2, " \
            "hidden_dim=64, num_layers=4))"
    config.write_text(
        f"_base_ = [{str(ROOT / 'configs/toy/tree2d_flow.py')!r}]\n"
        f"hooks = [dict(type='CurationHook', selector=dict(type='jest', n_chunks=2, score='learnability'), "
        f"filter_ratio=0.5, log_interval=2, reference=dict(model={model}, checkpoint={str(out / 'flow')!r}, "
        f"ema='pf_0.050')), "
        f"dict(type='ValidationHook', interval=2, num_batches=1)]\n"
        f"train_cfg = dict(max_iters=4, batch_size=64, batch_gpu=64, log_interval=1)\n")
    work = tmp_path / "flow_ajest"
    run([sys.executable, str(ROOT / "tools/train.py"), str(config), "--work-dir", str(work)])
    s = scalars(work)
    assert [step for step, _ in s["curation/score_kept"]] == [2, 4]
    for (_, kept), (_, everything) in zip(s["curation/score_kept"], s["curation/score_all"], strict=True):
        assert kept > everything  # JEST keeps the more learnable half
    val = [json.loads(line) for line in (work / "val_loss.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [0, 2, 4] and all(math.isfinite(v["loss"]) for v in val)
