"""Summaries of toy curation runs (tools/toy_report.py): read each run's validation curve and final toy
metrics, aggregate over seeds, and write a markdown table and plots.

A run is a work_dir with val_loss.jsonl (ValidationHook) and toy_metrics.json (ToyPlotHook, metrics=True).
"""

import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def latest_points(points: list[dict]) -> list[dict]:
    """The validation curve of the attempt that finished. ValidationHook appends to val_loss.jsonl, so a resumed
    run writes again from its checkpoint's step (with train_seconds restored from that checkpoint, below what the
    interrupted attempt had reached) and a run restarted in the same work_dir from step 0: the points a later one
    rewrote are dropped, so that the curve only moves forward, in steps and in wall time."""
    kept: list[dict] = []
    for point in points:
        while kept and kept[-1]["step"] >= point["step"]:
            kept.pop()
        kept.append(point)
    return kept


def load_run(work_dir: Path, ema: str) -> dict:
    """{'curve': [{step, nimg, train_seconds, loss}], 'metrics': {variant: {metric: value}}} of the final step,
    restricted to the raw weights' and the average `ema`'s variants."""
    lines = (work_dir / "val_loss.jsonl").read_text().splitlines()
    curve = latest_points([json.loads(line) for line in lines if line.strip()])
    all_metrics = json.loads((work_dir / "toy_metrics.json").read_text())
    final = all_metrics[max(all_metrics, key=int)]
    return {"curve": curve, "metrics": {k: v for k, v in final.items() if k == "raw" or k.startswith(ema)}}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], digits: int = 4) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def nimg_to_reach(curve: list[dict], target: float) -> float:
    """Training images seen when the validation loss first falls to `target` (inf if it never does)."""
    return next((p["nimg"] for p in curve if p["loss"] <= target), math.inf)


def mean_curve(seeds: list[dict]) -> list[dict]:
    """The validation curve averaged over seeds, point by point (every run evaluates at the same steps)."""
    n = min(len(r["curve"]) for r in seeds)
    return [{"nimg": seeds[0]["curve"][i]["nimg"], "loss": statistics.fmean(r["curve"][i]["loss"] for r in seeds)}
            for i in range(n)]


def summarize(runs: dict[str, list[dict]], ema: str, guided: str | None, baseline: str = "baseline") -> list[dict]:
    """One row per method: final validation loss, training seconds, images needed to reach the baseline's
    final validation loss (on the seed-averaged curves, relative to the baseline's own), and the toy metrics of
    the average `ema`, unguided and `guided` (e.g. 'pf_0.050_guided_w3'), mean ± std over seeds."""
    target = base_nimg = None
    if baseline in runs:
        base_curve = mean_curve(runs[baseline])
        target = base_curve[-1]["loss"]
        base_nimg = nimg_to_reach(base_curve, target)
    rows = []
    for method, seeds in runs.items():
        row = {"method": method, "seeds": len(seeds),
               "val_loss": _fmt([r["curve"][-1]["loss"] for r in seeds]),
               "train_s": _fmt([r["curve"][-1]["train_seconds"] for r in seeds], 1)}
        if target is not None:
            reach = nimg_to_reach(mean_curve(seeds), target)
            row["nimg_to_baseline_loss"] = "never" if math.isinf(reach) else f"{reach / base_nimg:.2f}x"
        for variant, tag in ((ema, ""), (guided, " guided")):
            if variant is None or variant not in seeds[0]["metrics"]:
                continue
            for metric in ("support_share", "class_accuracy", "outer_loss"):
                row[f"{metric}{tag}"] = _fmt([r["metrics"][variant][metric] for r in seeds], 3)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Validation loss against training images and against training wall time: the mean over seeds, with
    the range over seeds shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, seeds in runs.items():
        n = min(len(r["curve"]) for r in seeds)
        loss = [[r["curve"][i]["loss"] for r in seeds] for i in range(n)]
        mean, lo, hi = ([statistics.fmean(v) for v in loss], [min(v) for v in loss], [max(v) for v in loss])
        nimg = [seeds[0]["curve"][i]["nimg"] / 1e6 for i in range(n)]
        secs = [statistics.fmean(r["curve"][i]["train_seconds"] for r in seeds) for i in range(n)]
        for ax, x in zip(axes, (nimg, secs), strict=True):
            (line,) = ax.plot(x[1:], mean[1:], label=method)  # from the first evaluation after step 0
            ax.fill_between(x[1:], lo[1:], hi[1:], alpha=0.2, color=line.get_color())
    for ax, xlabel in zip(axes, ("training images (millions)", "training wall time (s)"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scatter_panels(images: dict[str, Path], path: Path) -> None:
    """Side by side the sample plots the runs wrote (one per method)."""
    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 3.6), squeeze=False)
    for ax, (method, image) in zip(axes[0], images.items(), strict=True):
        ax.imshow(plt.imread(image))
        ax.set_title(method)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
