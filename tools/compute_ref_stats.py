#!/usr/bin/env python
"""Reference statistics of a dataset for FID / FD-DINOv2 (feature means and covariances) and CMMD (embeddings):
tools/compute_ref_stats.py --data DIR_OR_NPZ_OR_MDS --out FILE.npz [--config CONFIG] [--evaluators NAME ...]
[--batch B] [--launcher {none,pytorch,slurm}]

The evaluators are the `evaluators` list of CONFIG (any Python config file that defines one, e.g. the training
config, so the statistics use the same networks and weights as tools/test.py), optionally narrowed to the
registered names given with --evaluators; without --config, the named evaluators with their default weight
paths. Each rank reads its slice of the data; the statistics are reduced across ranks and rank 0 writes FILE.npz
with keys <name>_<statistic> (e.g. fid_mu, fid_cov, fd_dinov2_mu, cmmd_embeddings, and <name>_network)."""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder of PNG/JPEG, an .npz, or a folder of MDS shards")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--config", help="a config whose `evaluators` list to use")
    p.add_argument("--evaluators", nargs="+", help="registered evaluator names (default: all in --config)")
    p.add_argument("--batch", type=int, default=64, help="images per device per step")
    p.add_argument("--image-key", default="x", help="MDS column of the images (tools/convert_dataset.py writes x)")
    p.add_argument("--label-key", default="label", help="MDS column of the labels")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    return p.parse_args(argv)


def evaluator_configs(args: argparse.Namespace) -> list[dict]:
    """The evaluator dicts to build: --config's list, narrowed to --evaluators; or just the names."""
    from mmengine.config import Config

    from diffscale.errors import ConfigError

    if args.config is None:
        if not args.evaluators:
            raise ConfigError("give --evaluators NAME ... or a --config with an `evaluators` list")
        return [dict(type=name) for name in args.evaluators]
    if not Path(args.config).is_file():
        raise ConfigError(f"config: no such file '{args.config}'")
    cfgs = [dict(c) for c in Config.fromfile(args.config).get("evaluators") or []]
    if args.evaluators:
        cfgs = [c for c in cfgs if c["type"] in args.evaluators]
        missing = set(args.evaluators) - {c["type"] for c in cfgs}
        if missing:
            raise ConfigError(f"--evaluators {sorted(missing)}: not in the `evaluators` of {args.config}")
    return cfgs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np

    from diffscale.errors import ConfigError, DataError
    from diffscale.evaluation.image_sources import open_source
    from diffscale.evaluation.pipeline import build_evaluators, check_inputs, feed, reference_stats
    from diffscale.utils.dist import destroy, init_distributed

    dist_info = init_distributed(args.launcher)
    t0 = time.perf_counter()
    try:
        evaluators = build_evaluators(evaluator_configs(args), dist_info.device)
        source = open_source(args.data, args.image_key, args.label_key)
        check_inputs(evaluators, images=True, has_labels=source.has_labels)
        device = dist_info.device
        batches = ((x.to(device), None if y is None else y.to(device))
                   for x, y in source.batches(args.batch, dist_info.rank, dist_info.world_size))
        feed(evaluators, batches)
        stats = reference_stats(evaluators)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy()
    if dist_info.is_main:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.out, **stats)
        counts = sorted({int(v) for k, v in stats.items() if k.endswith("_num")})
        print(f"wrote {args.out}: {'/'.join(map(str, counts))} images, {', '.join(sorted(stats))} "
              f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
