#!/usr/bin/env python
"""Evaluate a checkpoint: tools/test.py CONFIG CHECKPOINT [--num N] [--ref FILE] [--work-dir DIR]
[--cfg-options k=v ...] [--launcher {none,pytorch,slurm}], or existing images: tools/test.py CONFIG --images
DIR_OR_NPZ_OR_MDS.

Generates N samples with the config's `test_cfg` (sampler, guidance, guide, average), spread over the ranks
(sample i from seed test_cfg.seed + i, on rank i % world_size), feeds them to the config's `evaluators`, prints a
table and writes WORK_DIR/metrics.json. Evaluators that score the network itself (NLL) are handed the unguided
network; when no evaluator reads samples, none are generated. CHECKPOINT: a checkpoint directory, a work_dir (its
newest checkpoint), a work_dir's best/ (EvalHook) or an exported .safetensors. Bad configs and missing weight or
reference files exit with code 2 and one line naming the key or the file."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", help="not needed with --images")
    p.add_argument("--images", help="evaluate these images instead of sampling: a folder, an .npz or MDS shards")
    p.add_argument("--num", "--num-samples", dest="num", type=int, help="samples to generate (default test_cfg.num)")
    p.add_argument("--batch", type=int, help="per-device batch (default test_cfg.batch_gpu)")
    p.add_argument("--ref", help="reference statistics .npz (default test_cfg.ref)")
    p.add_argument("--work-dir", help="where metrics.json goes (default: the config's work_dir)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override existing config keys, e.g. test_cfg.ema=None")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace, cfg, settings: dict, dist_info) -> dict:
    """Build everything that can fail on a bad file first, then sample (or read) and evaluate. Collective."""
    from diffscale.evaluation.image_sources import open_source
    from diffscale.evaluation.pipeline import (
        build_evaluators,
        build_guide,
        check_inputs,
        hand_over_network,
        load_ref,
        load_sampling_nets,
        run_evaluation,
    )
    from diffscale.registry import SAMPLERS, build
    from diffscale.sampling.generate import generate, sample_shape
    from diffscale.sampling.guidance import guided

    evaluators = build_evaluators(cfg.evaluators, dist_info.device)
    ref = load_ref(settings["ref"], evaluators)
    rank, world = dist_info.rank, dist_info.world_size
    if args.images:
        source = open_source(args.images)
        check_inputs(evaluators, images=True, has_labels=source.has_labels)
        batches = ((x.to(dist_info.device), None if y is None else y.to(dist_info.device))
                   for x, y in source.batches(settings["batch_gpu"], rank, world))
        return run_evaluation(evaluators, batches, ref)
    net, decoder = load_sampling_nets(cfg, settings, args.checkpoint, dist_info.device)
    num_classes = int(getattr(net, "label_dim", 0))
    check_inputs(evaluators, images=settings["images"], has_labels=num_classes > 0)
    sampler = build(SAMPLERS, settings["sampler"], "test_cfg.sampler")
    guide = build_guide(settings["guide"], net, dist_info.device)
    if not hand_over_network(evaluators, net):  # the raw network at test_cfg.ema (NLL); nothing reads samples
        batches = iter(())
    else:
        batches = generate(net, sampler, settings["num"], settings["batch_gpu"],
                           sample_shape(net, settings["shape"]), guide=guide, num_classes=num_classes,
                           seed=settings["seed"], rank=rank, world_size=world, device=dist_info.device,
                           images=settings["images"], decoder=decoder)
    return run_evaluation(evaluators, batches, ref, denoiser=guided(net, guide, getattr(sampler, "guidance", 1.0)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffscale.config import load_config
    from diffscale.errors import CheckpointError, ConfigError, DataError

    try:
        if args.checkpoint is None and args.images is None:
            raise ConfigError("give a CHECKPOINT to sample from, or --images to evaluate existing images")
        cfg = load_config(args.config, args.cfg_options)
        from diffscale.evaluation.pipeline import test_settings

        settings = test_settings(cfg, num=args.num, batch_gpu=args.batch, ref=args.ref)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from diffscale.evaluation.pipeline import format_table
    from diffscale.utils.dist import destroy, init_distributed

    dist_info = init_distributed(args.launcher)
    try:
        result = evaluate(args, cfg, settings, dist_info)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, DataError) as exc:  # a bad input file: refused, named
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        destroy()
    if dist_info.is_main:
        out = Path(args.work_dir or cfg.work_dir) / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        record = dict(result, config=str(args.config), checkpoint=args.checkpoint, images=args.images,
                      world_size=dist_info.world_size, test_cfg={k: settings[k] for k in ("num", "seed", "ema")}
                      | {"guidance": settings["sampler"].get("guidance", 1.0), "ref": settings["ref"]})
        out.write_text(json.dumps(record, indent=1, default=str) + "\n")
        print(format_table(result))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
