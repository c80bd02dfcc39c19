#!/usr/bin/env python
"""Generate samples: tools/generate.py CONFIG CHECKPOINT --out DIR [--num N | --seeds 0-63,100] [--classes 1 2]
[--guidance W] [--guide CKPT|cfg] [--steps 32] [--ema NAME] [--batch-gpu B] [--cfg-options k=v ...]
[--launcher {none,pytorch,slurm}]

Writes DIR/<seed>.png for every sample, DIR/samples.npz (images uint8 [N, H, W, C], labels, seeds, in seed order)
and DIR/grid.png. Sample i uses noise seeded by its seed and class classes[i % len(classes)] (default: its seed
modulo the number of classes). Sampling settings come from the config's `test_cfg` (sampler, guide, ema);
the flags override them. Launched with several processes (tools/dist_generate via torchrun), rank r makes samples
r, r + W, ...; the files are the same at any world size.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_seeds(text: str) -> list[int]:
    """'0-3,10' -> [0, 1, 2, 3, 10]."""
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", help="a checkpoint dir, a work_dir (its newest checkpoint) or a .safetensors export")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=64, help="samples with seeds 0 .. num-1 (ignored with --seeds)")
    p.add_argument("--seeds", type=parse_seeds, help="e.g. 0-63 or 1,5,9")
    p.add_argument("--classes", type=int, nargs="+", help="class of sample i: classes[i %% len(classes)]")
    p.add_argument("--guidance", type=float, help="guidance weight w (1: none); default test_cfg.sampler's")
    p.add_argument("--guide", help="'cfg' for classifier-free guidance, or an autoguidance checkpoint")
    p.add_argument("--steps", type=int, help="sampler steps; default test_cfg.sampler's")
    p.add_argument("--ema", help="the average to sample (e.g. pf_0.100); 'none' for the raw weights")
    p.add_argument("--batch-gpu", type=int, help="samples per device per sampler call")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffscale.config import load_config
    from diffscale.errors import ConfigError
    from diffscale.utils.dist import destroy, init_distributed

    try:
        cfg = load_config(args.config, args.cfg_options)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    dist_info = init_distributed(args.launcher)
    try:
        from diffscale.sampling.write import generate_to_dir

        out = generate_to_dir(cfg, args, dist_info)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy()
    if dist_info.is_main:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
