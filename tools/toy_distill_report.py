#!/usr/bin/env python
"""tools/toy_distill_report.py [--teacher-iters N] [--iters N] [--batch B] [--lr LR] [--num-samples N] [--seed S]
[--out work_dirs/toy_distill_report]

DMD2 on the 2D tree toy, end to end: trains the EDM teacher (configs/toy/tree2d_baseline.py) into OUT/teacher,
distils it into a one-step generator (configs/dmd2/tree2d_dmd2.py, every part initialised from the teacher's
EMA) into OUT/dmd2, then samples the teacher with 32 and 1 Heun steps and the generator (EMA and raw weights) from
the same noise and writes OUT/report.md (NFE, support share, class accuracy, sample seconds), OUT/metrics.json and
OUT/samples.png. Options left out keep the configs' own values (teacher 4096 iterations at batch 4096; DMD2 5000
iterations at batch 1024, lr 1e-3). Finished runs with unchanged settings are reused.
Logic: diffscale/evaluation/distill_report.py.
"""

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffscale.errors import ConfigError  # noqa: E402
from diffscale.evaluation import distill_report as D  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-iters", type=int, default=None, help="teacher iterations (default: the config's)")
    p.add_argument("--iters", type=int, default=None, help="DMD2 iterations (default: the config's)")
    p.add_argument("--batch", type=int, default=None, help="DMD2 global batch, one micro-batch (default: the config's)")
    p.add_argument("--lr", type=float, default=None, help="lr of generator and fake score (default: the config's)")
    p.add_argument("--num-samples", type=int, default=4096, help="samples per row for the metrics and plots")
    p.add_argument("--seed", type=int, default=0, help="training seed of both runs and the sampling noise seed")
    p.add_argument("--out", default="work_dirs/toy_distill_report")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "tools/toy_distill_report.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        return D.run(args.teacher_iters, args.iters, args.batch, args.lr, args.num_samples, args.seed,
                     Path(args.out), command)
    except ConfigError as exc:  # a bad option, found when the run's config is resolved: one line, as tools/train.py
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
