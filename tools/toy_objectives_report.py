#!/usr/bin/env python
"""tools/toy_objectives_report.py [--iters N] [--batch B] [--num-samples N] [--seed S]
                                 [--out work_dirs/toy_objectives_report]

EDM, DDPM and rectified flow on the 2D tree toy at equal images seen: trains configs/toy/tree2d_baseline.py (EDM),
configs/toy/tree2d_ddpm.py (DDPM) and configs/toy/tree2d_flow.py (flow) with the same iterations, batch and seed
into OUT/edm, OUT/ddpm and OUT/flow, then samples every EMA from the same noise (EDM Heun; DDPM DDIM at its
config's steps and at Heun's NFE, ancestral DDPM over all T; flow Heun, Euler and stochastic Euler) and writes
OUT/report.md (NFE, support share, class accuracy, sample seconds), OUT/metrics.json and OUT/samples.png. Options
left out keep the configs' values (4096 iterations at batch 4096). Finished runs with unchanged settings are
reused. Logic: diffscale/evaluation/objectives_report.py.
"""

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffscale.errors import ConfigError  # noqa: E402
from diffscale.evaluation import objectives_report as D  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=None, help="iterations of every run (default: the configs')")
    p.add_argument("--batch", type=int, default=None, help="global batch of every run (default: the configs')")
    p.add_argument("--num-samples", type=int, default=4096, help="samples per row for the metrics and plots")
    p.add_argument("--seed", type=int, default=0, help="training seed of every run and the sampling noise seed")
    p.add_argument("--out", default="work_dirs/toy_objectives_report")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "tools/toy_objectives_report.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        return D.run(args.iters, args.batch, args.num_samples, args.seed, Path(args.out), command)
    except ConfigError as exc:  # a bad option, found when a run's config is resolved: one line, as tools/train.py
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
