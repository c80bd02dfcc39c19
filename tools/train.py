#!/usr/bin/env python
"""Train from a config: tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]] [--cfg-options k=v ...]
[--launcher {none,pytorch,slurm}]. Bad configs exit with code 2 and one line naming the key."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--work-dir", help="default: the config's work_dir, else work_dirs/<config name>")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="no value: the newest complete checkpoint in work_dir; or a checkpoint directory")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override existing config keys, e.g. train_cfg.max_iters=100 strategy.type=fsdp")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    p.add_argument("--check-world-size", type=int, metavar="N",
                   help="only validate the config for N processes (batch arithmetic) and exit: the launchers run "
                        "this before starting workers, so a bad config is one line, not one per worker")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffscale.config import load_config
    from diffscale.errors import CheckpointError, ConfigError, DataError

    try:
        cfg = load_config(args.config, args.cfg_options, args.work_dir)
        if args.check_world_size is not None:
            from diffscale.config import batch_arithmetic

            if args.check_world_size < 1:
                raise ConfigError(f"--check-world-size: expected a positive number of processes, got "
                                  f"{args.check_world_size}")
            batch_arithmetic(cfg.train_cfg.batch_size, cfg.train_cfg.batch_gpu, args.check_world_size)
            return 0
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from diffscale.engine.trainer import NonFiniteLossError, Trainer
    from diffscale.engine.work_dir_lock import WorkDirBusy
    from diffscale.utils.dist import destroy, init_distributed

    dist_info = init_distributed(args.launcher, need_group=cfg.strategy["type"] != "ddp")
    try:
        Trainer(cfg, dist_info, resume=args.resume).train()
    except (WorkDirBusy, CheckpointError, DataError) as exc:  # a busy work_dir (a ConfigError: caught first) or
        print(f"error: {exc}", file=sys.stderr)  # a bad input file: refused, named, nothing run
        return 2
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
