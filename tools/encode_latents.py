#!/usr/bin/env python
"""Encode images into SD-VAE latents (posterior moments) as MDS shards, for training with data.train.latents=True.

  tools/encode_latents.py --source imagefolder --input imagenet/train --output data/in256_latents \\
      --vae checkpoints/sd-vae-ft-ema --resolution 256 --workers 8
  torchrun --nproc_per_node 8 tools/encode_latents.py --source mds --input data/in256 --output data/in256_latents \\
      --vae checkpoints/sd-vae-ft-ema

--vae is a local copy of https://huggingface.co/stabilityai/sd-vae-ft-ema (nothing is downloaded here):
  huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir checkpoints/sd-vae-ft-ema

Each sample stores the posterior mean and log-variance of its centre-cropped image and of the image's mirror,
moments [2, 8, R/8, R/8], and its label. Under torchrun the ranks encode disjoint parts of the input; the merged
dataset is in input order whatever the number of processes. A killed run resumes when rerun with the same
arguments (only the missing parts are encoded). The output is read back and checked at the end.
Exit status 2: the input, the output or the VAE is not usable (one line says why).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SOURCES = ("imagefolder", "mds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, choices=SOURCES,
                   help="imagefolder: one folder per class; mds: image shards written by tools/convert_dataset.py")
    p.add_argument("--input", required=True, type=Path, help="the image folder or MDS dataset")
    p.add_argument("--output", required=True, type=Path, help="folder for index.json, part_*/ and diffscale.json")
    vae = p.add_mutually_exclusive_group(required=True)
    vae.add_argument("--vae", help="local sd-vae-ft-ema directory (config.json and weights)")
    vae.add_argument("--random-vae", action="store_true", help="the same architecture untrained (tests, benchmarks)")
    p.add_argument("--seed", type=int, default=0, help="weights of --random-vae (the same on every rank)")
    p.add_argument("--resolution", type=int, default=256, help="square side of the images in pixels (ADM centre "
                   "crop), a multiple of 8; latents are resolution / 8")
    p.add_argument("--batch", type=int, default=64, help="images per VAE forward per process (each also mirrored)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored moments")
    p.add_argument("--shard-samples", type=int, help="samples per part (a unit of work and of resume); "
                   "default: 64 MiB of moments")
    p.add_argument("--device", help="default: this process's GPU (LOCAL_RANK) if there is one, else cpu")
    p.add_argument("--workers", type=int, default=1, help="image decoding processes per rank (imagefolder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffscale.data.converters import ConversionError
    from diffscale.data.latents import encode_latents
    from diffscale.errors import ConfigError
    from diffscale.utils.dist import destroy, init_distributed

    info = init_distributed()
    t0 = time.perf_counter()
    try:
        report = encode_latents(
            args.source, args.input, args.output, resolution=args.resolution, vae_path=args.vae,
            random_vae=args.random_vae, seed=args.seed, batch=args.batch, dtype=args.dtype,
            shard_samples=args.shard_samples, device=args.device or info.device, workers=args.workers,
            overwrite=args.overwrite)
    except (ConversionError, ConfigError) as exc:
        # Errors every rank meets alike are printed once; one rank's own (an unreadable image) by that rank.
        if info.is_main or getattr(exc, "rank_local", False):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy()
    if info.is_main:
        meta = report.meta
        print(f"wrote {meta['num_samples']} latents {tuple(meta['latent_shape'])} (moments {tuple(meta['shape'])} "
              f"{meta['dtype']}), {len(meta['class_names'])} classes, to {report.out_dir} on {info.world_size} "
              f"process(es) in {time.perf_counter() - t0:.1f} s; read back and checked (count, labels in order)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
