#!/usr/bin/env python
"""tools/early_exit_report.py CONFIG CHECKPOINT [--thresholds 0.05 0.075 0.1 0.125] [--num N] [--batch B]
[--ref FILE] [--out DIR] [--cfg-options k=v ...]

DeeDiff early exit, measured: samples a DeeDiff checkpoint (a work_dir, checkpoint or export of a
configs/deediff/deediff_*.py run) with the config's early-exit sampler (test_cfg.sampler) at each threshold and
with its plain DDPM / DDIM sampler, from the same seeds, scores every set with the config's evaluators (CMMD, FID
against test_cfg.ref / --ref), and writes OUT/report.md (layer ratio, GFLOPs per sample, saving against the full
network, wall-clock of real and simulated exit), OUT/metrics.json and OUT/exit_vs_timestep.png. One process.
Logic: diffscale/evaluation/early_exit_report.py. Bad configs and files exit 2 with one line.
"""

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffscale.errors import ConfigError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from diffscale.evaluation.early_exit_report import DEFAULT_THRESHOLDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS))
    p.add_argument("--num", type=int, help="samples per threshold (default test_cfg.num)")
    p.add_argument("--batch", type=int, help="samples per sampler call (default test_cfg.batch_gpu)")
    p.add_argument("--ref", help="reference statistics (default test_cfg.ref)")
    p.add_argument("--out", default=None, help="output folder (default WORK_DIR/early_exit_report)")
    p.add_argument("--cfg-options", nargs="+", default=[], help="override config keys, k=v")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "tools/early_exit_report.py", *(sys.argv[1:] if argv is None else argv)])
    from diffscale import config as C
    from diffscale.evaluation import early_exit_report as E
    from diffscale.utils.dist import destroy, init_distributed

    try:
        cfg = C.load_config(args.config, args.cfg_options)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    dist_info = init_distributed("none")
    out = Path(args.out) if args.out else Path(cfg.work_dir) / "early_exit_report"
    try:
        rows = E.run(cfg, args.checkpoint, args.thresholds, args.num, args.batch, args.ref, out, dist_info.device,
                     command)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy()
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, {out / 'metrics.json'}, {out / 'exit_vs_timestep.png'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
