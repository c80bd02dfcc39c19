#!/usr/bin/env python
"""tools/toy_report.py [--methods baseline random ajest early_ajest] [--seeds 0 1 2] [--batch 1024]
[--iters 1024] [--guidance 3] [--out work_dirs/toy_report]

The curation experiment of the AJEST work on the 2D tree toy, end to end: for each seed it trains the
reference (configs/toy/tree2d_ref.py: half the width, 1/8 of the iterations), then each method's learner
(configs/toy/tree2d_<method>.py) with that reference for selection (ajest, early_ajest) and for
autoguidance at sampling (every method, so guided metrics compare like with like), then writes
report.md (a table, mean ± std over seeds), curves.png (validation loss against training images and
against training wall time) and samples.png (guided samples of the EMA of each method, first seed).

Every run is `tools/train.py` on a resolved config written to OUT/configs/, in OUT/<method>_seed<k>/.
Finished runs are kept, so an interrupted report picks up where it stopped.
The defaults (batch 1024, 1024 steps) shrink the published toy (batch 4096, 4096 steps) so that the whole
report runs in about 15 minutes on 2 CPU cores; `--methods ajest --seeds 0` is the README's main job.
"""

import argparse
import copy
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffscale import config as C  # noqa: E402
from diffscale.evaluation import toy_report as R  # noqa: E402

METHODS = ("baseline", "random", "ajest", "early_ajest")
EMA = "pf_0.050"  # the learners' average used for samples and metrics (as in the toy configs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=1024, help="kept batch per step (the super-batch is 5x)")
    p.add_argument("--iters", type=int, default=1024, help="learner steps; the reference trains iters / 8")
    p.add_argument("--guidance", type=float, default=3.0, help="autoguidance weight of the guided metrics")
    p.add_argument("--num-samples", type=int, default=4096, help="samples for the plots and sample metrics")
    p.add_argument("--out", default="work_dirs/toy_report")
    return p.parse_args(argv)


def _set_hooks(cfg, reference: dict | None, args, val_interval: int) -> None:
    """Point selection and sampling at this seed's reference; validate every `val_interval` steps."""
    for hook in cfg.hooks:
        if hook["type"] == "CurationHook" and hook.get("reference") is not None:
            hook["reference"] = copy.deepcopy(reference)
        elif hook["type"] == "ValidationHook":
            hook["interval"] = val_interval
        elif hook["type"] == "ToyPlotHook":
            hook["num_samples"] = args.num_samples
            if reference is not None:
                hook["guide"] = copy.deepcopy(reference)
                hook["sampler"] = dict(hook["sampler"], guidance=args.guidance)


def write_config(name: str, method: str, seed: int, iters: int, args, reference: dict | None, out: Path) -> Path:
    b = args.batch
    options = [f"train_cfg.seed={seed}", f"train_cfg.batch_size={b}", f"train_cfg.batch_gpu={b}",
               f"train_cfg.max_iters={iters}", f"checkpoint.interval={iters}",
               f"train_cfg.log_interval={max(iters // 32, 1)}"]
    cfg = C.load_config(str(ROOT / f"configs/toy/tree2d_{method}.py"), options, str(out / name))
    _set_hooks(cfg, reference, args, max(iters // 32, 1))
    path = out / "configs" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    C.dump(cfg, path)
    return path


def _finished(work_dir: Path, iters: int) -> bool:
    return (work_dir / "toy_metrics.json").is_file() and str(iters) in (work_dir / "toy_metrics.json").read_text()


def train(config: Path, work_dir: Path, iters: int, label: str) -> None:
    if _finished(work_dir, iters):
        print(f"{label}: done already ({work_dir})", flush=True)
        return
    if work_dir.exists():  # unfinished: start again, so wall times are one uninterrupted run
        shutil.rmtree(work_dir)
    t0 = time.perf_counter()
    print(f"{label}: training ...", end=" ", flush=True)
    log = work_dir.parent / f"{work_dir.name}.out"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), str(config), "--work-dir", str(work_dir)],
                              stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"\n{label} failed (exit {proc.returncode}); its output: {log}")
    print(f"{time.perf_counter() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    ref_model = C.load_config(str(ROOT / "configs/toy/tree2d_ajest.py")).reference["model"]
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    ref_iters = max(args.iters // 8, 1)
    for seed in args.seeds:
        ref_dir = out / f"ref_seed{seed}"
        train(write_config(ref_dir.name, "ref", seed, ref_iters, args, None, out), ref_dir, ref_iters,
              f"reference seed {seed} ({ref_iters} steps)")
        reference = dict(model=ref_model, checkpoint=str(ref_dir), ema="pf_0.100")
        for method in args.methods:
            work = out / f"{method}_seed{seed}"
            train(write_config(work.name, method, seed, args.iters, args, reference, out), work, args.iters,
                  f"{method} seed {seed} ({args.iters} steps)")
            runs[method].append(R.load_run(work, EMA))

    guided = f"{EMA}_guided_w{args.guidance:g}"
    rows = R.summarize(runs, EMA, guided)
    R.plot_curves(runs, out / "curves.png")
    first = args.seeds[0]
    R.plot_scatter_panels({m: out / f"{m}_seed{first}" / "samples" / f"toy_{EMA}_iter_{args.iters:07d}.png"
                           for m in args.methods}, out / "samples.png")
    table = R.markdown_table(rows)
    (out / "report.md").write_text(
        f"# 2D tree toy: data curation methods\n\nBatch {args.batch} kept per step (super-batch "
        f"{round(args.batch / 0.2)} for selection), {args.iters} steps, seeds {args.seeds}; reference: half width, "
        f"{ref_iters} steps. Metrics of the EMA ({EMA}); guided: autoguidance by the reference at w = "
        f"{args.guidance:g}. Mean ± std over seeds. 'nimg to baseline loss': training images needed to reach the "
        f"baseline's final validation loss, relative to the baseline.\n\n{table}\n![curves](curves.png)\n\n"
        f"![samples](samples.png)\n")
    print("\n" + table)
    print(f"wrote {out / 'report.md'}, {out / 'curves.png'}, {out / 'samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
