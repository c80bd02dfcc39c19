"""Data suite: MDSImageStream throughput (images/s) on a synthetic Tiny-ImageNet-sized dataset.

loader  converts `--loader-images` random 64x64 RGB images (npz -> MDS, the real converter) into a temporary
        folder and times `next(loader)` at batch 16 and at the curation super-batch 80 (= 16 / (1 - 0.8)):
        gather from the memory-mapped shards, x-flip, uint8 -> float32 in [-1, 1] on the device. Measured
        with the DataLoader workers and in-process (0 workers). Target: >= 5x what the trainer consumes
        (tiny-xxs at batch 16).
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from tools.benchmarks.common import time_steps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loader-images", type=int, default=2048, help="synthetic 64x64 images for the loader suite")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the loader suite")
    p.add_argument("--loader-batches", type=int, nargs="+", default=[16, 80], help="batch sizes of the loader suite")


def _synthetic_dataset(root: Path, num_images: int) -> Path:
    from diffscale.data.converters import convert

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, 64, 64, 3), dtype=np.uint8)  # NHWC, as image arrays usually are
    np.savez(root / "synthetic.npz", images=images, labels=rng.integers(0, 200, num_images))
    return convert("npz", root / "synthetic.npz", root / "mds", progress=False).out_dir


def bench_loader(args: argparse.Namespace) -> dict:
    from diffscale.data.streaming import MDSImageStream

    num_images = getattr(args, "loader_images", 2048)
    workers = getattr(args, "loader_workers", 2)
    batches = getattr(args, "loader_batches", [16, 80])
    steps, warmup, rounds = getattr(args, "steps", 50), getattr(args, "warmup", 20), getattr(args, "rounds", 5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"images": num_images, "workers": workers, "device": device.type}
    with tempfile.TemporaryDirectory(prefix="diffscale-bench-data-") as tmp:
        path = _synthetic_dataset(Path(tmp), num_images)
        for batch in batches:
            for num_workers in (workers, 0):
                loader = MDSImageStream(str(path), batch_gpu=batch, device=device, xflip=True,
                                        num_workers=num_workers)
                time_steps(lambda loader=loader: next(loader), warmup)  # starts the workers, fills the prefetch
                seconds = [time_steps(lambda loader=loader: next(loader), steps) for _ in range(rounds)]
                loader.close()
                suffix = f"b{batch}" if num_workers else f"b{batch}_inprocess"
                results[f"img_per_s_{suffix}"] = batch / statistics.median(seconds)
    return results


SUITES = {"loader": bench_loader}
