"""tools/generate.py's work: sample a checkpoint over ranks and write PNGs, one npz and a grid."""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from diffscale.engine.hooks.sample import preview
from diffscale.errors import ConfigError
from diffscale.evaluation.pipeline import (
    build_guide,
    load_sampling_nets,
    part_model_cfg,
    sampling_parts,
    test_settings,
)
from diffscale.registry import SAMPLERS, build
from diffscale.sampling.generate import generate, sample_shape, to_uint8
from diffscale.utils.dist import DistInfo, barrier


def _guide_cfg(cfg, settings: dict, guide: str | None) -> str | dict | None:
    """--guide: 'cfg', or a checkpoint of the model in test_cfg.guide / the config's `reference` (the AJEST
    reference is the natural autoguidance guide), else of the config's own model."""
    if guide is None:
        return settings["guide"]
    if guide == "cfg":
        return "cfg"
    if isinstance(settings["guide"], dict):
        model = settings["guide"]["model"]
    elif "reference" in cfg and isinstance(cfg.reference, dict) and "model" in cfg.reference:
        model = cfg.reference["model"]
    else:
        model = part_model_cfg(cfg, sampling_parts(cfg, settings)[0])
    return dict(model=dict(model), checkpoint=guide, ema=settings["guide"].get("ema") if isinstance(
        settings["guide"], dict) else None)


def generate_to_dir(cfg, args: argparse.Namespace, dist: DistInfo) -> Path:
    ema = None if args.ema == "none" else args.ema
    settings = test_settings(cfg, ema=ema, batch_gpu=args.batch_gpu)
    if args.ema == "none":
        settings["ema"] = None
    sampler_cfg = dict(settings["sampler"])
    if args.steps is not None:
        sampler_cfg["num_steps"] = args.steps
    if args.guidance is not None:
        sampler_cfg["guidance"] = args.guidance
    guide_cfg = _guide_cfg(cfg, settings, args.guide)
    if sampler_cfg.get("guidance", 1.0) != 1.0 and guide_cfg is None:
        raise ConfigError(f"--guidance {sampler_cfg['guidance']} needs a guide: --guide cfg or --guide CHECKPOINT "
                          f"(or test_cfg.guide)")
    sampler = build(SAMPLERS, sampler_cfg, "test_cfg.sampler")
    net, decoder = load_sampling_nets(cfg, settings, args.checkpoint, dist.device)
    guide = build_guide(guide_cfg, net, dist.device)
    seeds = torch.tensor(args.seeds if args.seeds else range(args.num), dtype=torch.int64)
    num_classes = int(getattr(net, "label_dim", 0))
    if args.classes:
        bad = [c for c in args.classes if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"--classes {bad}: the model has {num_classes} classes")
        classes = torch.tensor(args.classes, dtype=torch.int64)[torch.arange(len(seeds)) % len(args.classes)]
    else:
        classes = seeds % num_classes if num_classes else None
    shape = sample_shape(net, settings["shape"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"images": [], "labels": [], "seeds": []}
    for batch in generate(net, sampler, len(seeds), settings["batch_gpu"], shape, guide=guide, seeds=seeds,
                          classes=classes, rank=dist.rank, world_size=dist.world_size, device=dist.device,
                          images=False, decoder=decoder):
        x = batch.samples.cpu()
        images = to_uint8(x) if x.shape[1] in (1, 3) else to_uint8(preview(x) * 2 - 1)
        for image, seed in zip(images, batch.seeds.tolist(), strict=True):
            Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(out / f"{seed:06d}.png")
        parts["images"].append(images.permute(0, 2, 3, 1).numpy())
        parts["labels"].append((batch.labels if batch.labels is not None else torch.full_like(batch.seeds, -1)).cpu())
        parts["seeds"].append(batch.seeds.cpu())
    part = out / f".part_rank{dist.rank:05d}.npz"
    np.savez(part, **{k: np.concatenate([np.asarray(v) for v in vs]) if vs else np.zeros(0) for k, vs in parts.items()})
    barrier()
    if dist.is_main:
        _merge(out, dist.world_size, sampler_cfg, settings, guide_cfg, args.checkpoint)
    barrier()
    return out


def _merge(out: Path, world_size: int, sampler_cfg: dict, settings: dict, guide_cfg, checkpoint: str) -> None:
    """Rank parts -> samples.npz in seed order (atomically), grid.png of the first 64, generate.json."""
    parts = [np.load(out / f".part_rank{r:05d}.npz") for r in range(world_size)]
    merged = {k: np.concatenate([p[k] for p in parts if p[k].size]) for k in ("images", "labels", "seeds")}
    order = np.argsort(merged["seeds"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    tmp = out / "samples.tmp.npz"
    np.savez(tmp, **merged)
    tmp.replace(out / "samples.npz")
    for r in range(world_size):
        (out / f".part_rank{r:05d}.npz").unlink()
    first = torch.from_numpy(merged["images"][:64]).permute(0, 3, 1, 2).float() / 255
    save_image(make_grid(first, nrow=8, padding=1), out / "grid.png")
    (out / "generate.json").write_text(json.dumps({
        "checkpoint": str(checkpoint), "ema": settings["ema"], "sampler": sampler_cfg,
        "guide": guide_cfg if not isinstance(guide_cfg, dict) else {k: str(v) for k, v in guide_cfg.items()},
        "num": int(len(merged["seeds"]))}, indent=1) + "\n")
