"""Data suite: MDSImageStream throughput (images/s) on synthetic Tiny-ImageNet-sized datasets, per MDS encoding.

loader  writes `--loader-images` random 64x64 RGB images into a temporary folder once per encoding of
        `--loader-encodings`: raw (npz -> MDS with the real converter: fixed-size `ndarray:uint8:3,64,64`, the
        memory-mapped fast path), zstd (the same column written by mosaic's MDSWriter with compression='zstd':
        decompressed once, then the fast path), png and jpeg (image columns written by MDSWriter, decoded per
        sample). For each it times `next(loader)` at batch 16 and at the curation super-batch 80 (= 16 / (1 - 0.8)):
        gather (and decode) in the loader, x-flip, uint8 -> float32 in [-1, 1] on the device; with the DataLoader
        workers and in-process (0 workers). `x_consumption_<encoding>` is the slowest of these figures over
        `--loader-consumption`, the images/s the trainer consumes. Target: >= 5x (tiny-xxs at batch 16).
        The cost of `verify=True` on the raw dataset: `verify_s` (checking every shard's content hash, once, at
        start-up) and `verify_epochs`, that time in epochs of the fastest loader figure.
"""

import argparse
import io
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from tools.benchmarks.common import time_steps

ENCODINGS = ("raw", "zstd", "png", "jpeg")
# img/s of the trainer: the edm2_step suite's tiny-xxs at batch 16, fp32, on this repository's 2 CPU cores (README)
TRAINER_IMG_PER_S = 0.46


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loader-images", type=int, default=2048, help="synthetic 64x64 images for the loader suite")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the loader suite")
    p.add_argument("--loader-batches", type=int, nargs="+", default=[16, 80], help="batch sizes of the loader suite")
    p.add_argument("--loader-encodings", nargs="+", choices=ENCODINGS, default=list(ENCODINGS),
                   help="MDS encodings of the loader suite")
    p.add_argument("--loader-consumption", type=float, default=TRAINER_IMG_PER_S,
                   help="images/s the trainer consumes, for the loader's ratio to it (default: edm2_step, CPU)")


def _images(num_images: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, 64, 64, 3), dtype=np.uint8)  # NHWC, as image arrays usually are
    return images, rng.integers(0, 200, num_images)


def _converted(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The raw dataset, as tools/convert_dataset.py writes it."""
    from diffscale.data.converters import convert

    np.savez(root / "synthetic.npz", images=images, labels=labels)
    return convert("npz", root / "synthetic.npz", root / "raw", progress=False).out_dir


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _written(root: Path, encoding: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """The dataset of `encoding` written with mosaic's MDSWriter (columns x, label), shards of the converter's size."""
    from PIL import Image
    from streaming import MDSWriter

    from diffscale.data.converters import SHARD_BYTES

    column = {"zstd": f"ndarray:uint8:3,{images.shape[1]},{images.shape[2]}", "png": "png", "jpeg": "jpeg"}[encoding]
    value = {"zstd": lambda im: im.transpose(2, 0, 1), "png": Image.fromarray, "jpeg": _jpeg}[encoding]
    with MDSWriter(out=str(root / encoding), columns={"x": column, "label": "int"}, size_limit=SHARD_BYTES,
                   compression="zstd" if encoding == "zstd" else None) as writer:
        for image, label in zip(images, labels, strict=True):
            writer.write({"x": value(image), "label": int(label)})
    return root / encoding


def _time_loader(path: Path, batch: int, num_workers: int, device: torch.device, args: argparse.Namespace) -> float:
    """Images/s of `next(loader)`: the median over rounds, after a warm-up that starts the workers."""
    from diffscale.data.streaming import MDSImageStream

    steps, warmup, rounds = getattr(args, "steps", 50), getattr(args, "warmup", 20), getattr(args, "rounds", 5)
    loader = MDSImageStream(str(path), batch_gpu=batch, device=device, xflip=True, num_workers=num_workers)
    time_steps(lambda: next(loader), warmup)  # starts the workers, fills the prefetch, decompresses
    seconds = [time_steps(lambda: next(loader), steps) for _ in range(rounds)]
    loader.close()
    return batch / statistics.median(seconds)


def bench_loader(args: argparse.Namespace) -> dict:
    num_images = getattr(args, "loader_images", 2048)
    workers = getattr(args, "loader_workers", 2)
    batches = getattr(args, "loader_batches", [16, 80])
    encodings = getattr(args, "loader_encodings", list(ENCODINGS))
    consumption = getattr(args, "loader_consumption", TRAINER_IMG_PER_S)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"images": num_images, "workers": workers, "device": device.type, "consumption_img_per_s": consumption}
    images, labels = _images(num_images)
    with tempfile.TemporaryDirectory(prefix="diffscale-bench-data-") as tmp:
        for encoding in encodings:
            if encoding == "raw":
                path = _converted(Path(tmp), images, labels)
            else:
                path = _written(Path(tmp), encoding, images, labels)
            figures = []
            for batch in batches:
                for num_workers in (workers, 0):
                    ips = _time_loader(path, batch, num_workers, device, args)
                    suffix = f"b{batch}" if num_workers else f"b{batch}_inprocess"
                    results[f"{encoding}_img_per_s_{suffix}"] = ips
                    figures.append(ips)
            results[f"x_consumption_{encoding}"] = min(figures) / consumption
            if encoding == "raw":
                results.update(_verify_cost(path, num_images, max(figures)))
    return results


def _verify_cost(path: Path, num_images: int, img_per_s: float) -> dict:
    """Seconds to check every shard's content hash (what verify=True adds at start-up), median of 3, and that
    time in epochs of the loader at `img_per_s`."""
    from diffscale.data.mds import MDSIndex, ShardStore

    index, _ = MDSIndex.open(str(path))
    store = ShardStore(index)
    seconds = statistics.median(time_steps(store.verify_hashes, 1) for _ in range(3))
    return {"verify_s": seconds, "verify_mb_per_s": sum(index.shard_bytes) / 1e6 / seconds,
            "verify_epochs": seconds / (num_images / img_per_s)}


SUITES = {"loader": bench_loader}
