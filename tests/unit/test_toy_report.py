"""The toy report's aggregation: examples-to-target, mean ± std over seeds, the markdown table."""

import json
import math
import statistics

import pytest

from diffscale.evaluation.toy_report import load_run, markdown_table, nimg_to_reach, summarize


def run(losses: list[float], seconds: float, support: float) -> dict:
    curve = [{"step": i, "nimg": 100 * i, "train_seconds": seconds * i / (len(losses) - 1), "loss": v}
             for i, v in enumerate(losses)]
    metrics = {"pf_0.050": {"support_share": support, "class_accuracy": 0.9, "outer_loss": 1.0}}
    return {"curve": curve, "metrics": metrics}


def test_nimg_to_reach_is_the_first_crossing():
    curve = [{"nimg": 0, "loss": 1.0}, {"nimg": 10, "loss": 0.6}, {"nimg": 20, "loss": 0.4}, {"nimg": 30, "loss": 0.3}]
    assert nimg_to_reach(curve, 0.5) == 20
    assert nimg_to_reach(curve, 0.6) == 10
    assert math.isinf(nimg_to_reach(curve, 0.1))


def test_summary_against_a_hand_computation():
    runs = {"baseline": [run([1.0, 0.8, 0.5], 10.0, 0.5), run([1.0, 0.7, 0.7], 12.0, 0.7)],
            "ajest": [run([1.0, 0.5, 0.4], 30.0, 0.8), run([1.0, 0.6, 0.5], 34.0, 0.6)]}
    rows = {r["method"]: r for r in summarize(runs, "pf_0.050", guided=None)}
    # Seed-averaged curves: baseline [1.0, 0.75, 0.6] (target 0.6, reached at nimg 200), ajest [1.0, 0.55, 0.45]
    # (below 0.6 already at nimg 100).
    assert rows["baseline"]["nimg_to_baseline_loss"] == "1.00x"
    assert rows["ajest"]["nimg_to_baseline_loss"] == "0.50x"
    assert rows["ajest"]["val_loss"] == f"{0.45:.4f} ± {statistics.stdev([0.4, 0.5]):.4f}"
    assert rows["ajest"]["train_s"] == f"{32.0:.1f} ± {statistics.stdev([30.0, 34.0]):.1f}"
    assert rows["ajest"]["support_share"] == f"{0.7:.3f} ± {statistics.stdev([0.8, 0.6]):.3f}"


def test_a_method_that_never_reaches_the_baseline_loss():
    runs = {"baseline": [run([1.0, 0.5], 1.0, 0.5)], "random": [run([1.0, 0.6], 1.0, 0.5)]}
    rows = {r["method"]: r for r in summarize(runs, "pf_0.050", guided=None)}
    assert rows["random"]["nimg_to_baseline_loss"] == "never"


def test_relative_examples_to_the_baseline_loss():
    runs = {"baseline": [run([1.0, 0.8, 0.6, 0.5], 1.0, 0.5)], "ajest": [run([1.0, 0.5, 0.4, 0.3], 1.0, 0.5)]}
    rows = {r["method"]: r for r in summarize(runs, "pf_0.050", guided=None)}
    assert rows["baseline"]["nimg_to_baseline_loss"] == "1.00x"
    assert rows["ajest"]["nimg_to_baseline_loss"] == f"{100 / 300:.2f}x"  # 0.5 reached at 100 vs 300
    table = markdown_table(list(rows.values()))
    assert table.splitlines()[0].startswith("| method | seeds | val loss | train s | nimg to baseline loss")
    assert len(table.splitlines()) == 4


@pytest.mark.parametrize("losses", [[1.0, 0.9], [2.0, 1.0, 0.5]])
def test_single_seed_has_no_spread(losses):
    row = summarize({"baseline": [run(losses, 5.0, 0.5)]}, "pf_0.050", guided=None)[0]
    assert "±" not in row["val_loss"] and row["nimg_to_baseline_loss"] == "1.00x"


def test_a_resumed_or_restarted_run_keeps_the_curve_of_its_last_attempt(tmp_path):
    """val_loss.jsonl is appended to: a run resumed from its step-4 checkpoint writes steps 6 and 8 again with
    train_seconds from that checkpoint, a restart writes from step 0. The curve must not step backwards in wall
    time (or steps) where the later attempt took over."""
    def point(step: int, seconds: float) -> str:
        return json.dumps({"step": step, "nimg": 10 * step, "train_seconds": seconds, "loss": 1.0 / (step + 1)})

    lines = [point(0, 0.0), point(2, 1.0), point(4, 2.0), point(6, 3.0), point(8, 4.0),  # killed after step 8
             point(6, 2.5), point(8, 3.5), point(10, 4.5)]  # resumed from the step-4 checkpoint (2.0 s)
    (tmp_path / "val_loss.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "toy_metrics.json").write_text(json.dumps({"10": {"raw": {"support_share": 0.5}}}))
    curve = load_run(tmp_path, "pf_0.050")["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4, 6, 8, 10]
    assert [p["train_seconds"] for p in curve] == [0.0, 1.0, 2.0, 2.5, 3.5, 4.5]
    (tmp_path / "val_loss.jsonl").write_text("\n".join(lines + [point(0, 0.0), point(2, 0.7)]) + "\n")
    assert [p["train_seconds"] for p in load_run(tmp_path, "pf_0.050")["curve"]] == [0.0, 0.7]
