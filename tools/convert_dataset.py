#!/usr/bin/env python
"""Convert an image dataset into MDS shards for training (data.train.path).

  tools/convert_dataset.py --source tiny-imagenet --input tiny-imagenet-200 --output data/tiny64 --split all
  tools/convert_dataset.py --source tiny-imagenet --input tiny-imagenet-200 --output data/tiny64/val --split val
  tools/convert_dataset.py --source imagefolder --input imagenet/train --output data/in64 --resolution 64 --workers 8
  tools/convert_dataset.py --source cifar10 --input cifar-10-batches-py --output data/cifar10
  tools/convert_dataset.py --source imagenet64 --input data --output data/imagenet64 --split all
  tools/convert_dataset.py --source npz --input latents.npz --output data/in512_latents

The output is checked by reading it back. Unreadable images are skipped and printed with their path; the
exit status is then 1 (the shards of the readable ones are complete) unless --allow-unreadable is given.
Exit status 2: the input or the output is not usable (one line says why).

imagenet64 is the official downsampled ImageNet 64x64: --input is a folder holding Imagenet64_train_part1.zip,
Imagenet64_train_part2.zip and Imagenet64_val.zip (read in place, not unpacked), or their unpacked pickles
train_data_batch_1..10 and val_data (also inside Imagenet64_train/ and Imagenet64_val/), or one of the zips.
Labels 1..1000 are stored as 0..999; class ids and names are "0".."999" (the files have no class names).
The pickles of cifar10 and imagenet64 are read with a restricted unpickler (numpy arrays and plain values only).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SOURCES = ("tiny-imagenet", "imagefolder", "cifar10", "imagenet64", "npz")
SPLIT_SOURCES = ("tiny-imagenet", "cifar10", "imagenet64")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--input", required=True, type=Path, help="the dataset folder (npz: the file; imagenet64: "
                   "the folder of the official zips or of their pickles, or one zip)")
    p.add_argument("--output", required=True, type=Path, help="folder for index.json, shards and diffscale.json")
    p.add_argument("--resolution", type=int, help="square side in pixels (centre crop as ADM); "
                   "default: the source's own (tiny-imagenet 64, cifar10 32, imagenet64 64, npz as stored); "
                   "imagefolder needs it")
    p.add_argument("--split", choices=("train", "val", "all"), default="train",
                   help="tiny-imagenet, cifar10 and imagenet64; 'all' writes OUTPUT/train and OUTPUT/val")
    p.add_argument("--workers", type=int, default=1, help="decoding processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing MDS dataset at --output")
    p.add_argument("--allow-unreadable", action="store_true", help="exit 0 even if some images were unreadable")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffscale.data.converters import ConversionError, convert
    from diffscale.errors import ConfigError

    if args.split == "all" and args.source not in SPLIT_SOURCES:
        print(f"error: --split all: only {', '.join(SPLIT_SOURCES)} have splits, not {args.source}", file=sys.stderr)
        return 2
    splits = ("train", "val") if args.split == "all" else (args.split,)
    status = 0
    for split in splits:
        out_dir = args.output / split if args.split == "all" else args.output
        t0 = time.perf_counter()
        try:
            report = convert(args.source, args.input, out_dir, args.resolution, args.workers, split, args.overwrite)
        except (ConversionError, ConfigError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        meta = report.meta
        print(f"wrote {meta['num_samples']} samples {tuple(meta['shape'])} {meta['dtype']}, "
              f"{len(meta['class_names'])} classes, to {report.out_dir} in {time.perf_counter() - t0:.1f} s; "
              f"read back and checked (count, label histogram)")
        if report.unreadable:
            print(f"{len(report.unreadable)} unreadable images skipped:", file=sys.stderr)
            for path, reason in report.unreadable:
                print(f"  {path}: {reason}", file=sys.stderr)
            status = status or (0 if args.allow_unreadable else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
