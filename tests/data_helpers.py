"""Small datasets made inside tests (no downloads): Tiny ImageNet in its official layout, CIFAR-10 python
batches, downsampled ImageNet 64x64 pickles and zips, MDS shards written through the real converter, and SD-VAE
latents in tools/encode_latents.py's format."""

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(label: int, index: int, size: int, gray: bool = False) -> Image.Image:
    """An image whose mean red level tells its class (20 + 40 * label, robust to JPEG) and whose left half is
    darker than its right half (so a horizontal flip is visible)."""
    rng = np.random.default_rng([label, index])
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0] = 20 + 40 * label
    img[..., 1] = rng.integers(0, 256)
    img[..., 2] = np.where(np.arange(size) < size // 2, 30, 220)[None, :]
    return Image.fromarray(img).convert("L") if gray else Image.fromarray(img)


def make_tiny_imagenet(root: Path, num_classes: int = 4, per_class: int = 6, val_per_class: int = 2,
                       size: int = 64) -> Path:
    """A Tiny ImageNet in the official zip's layout under root/tiny-imagenet-200 (returned): wnids.txt (not
    sorted, as in the zip), words.txt (with classes beyond wnids.txt), train/<wnid>/images/<wnid>_<i>.JPEG with
    <wnid>_boxes.txt, val/images/val_<k>.JPEG with val_annotations.txt. Class k in sorted wnid order has
    images made by class_image(k, ...); the first training image of each class is grayscale, as some are."""
    base = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{10000000 + 7919 * k:08d}" for k in range(num_classes)]  # sorted by construction
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))
    words = [f"{w}\tclass {k} name, synonym {k}" for k, w in enumerate(wnids)] + ["n99999999\tunused class"]
    (base / "words.txt").write_text("\n".join(words) + "\n")
    for k, wnid in enumerate(wnids):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(k, i, size, gray=i == 0).save(images / f"{wnid}_{i}.JPEG", quality=95)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    annotations = []
    for k in range(num_classes * val_per_class):
        label = k % num_classes
        class_image(label, 1000 + k, size).save(base / "val" / "images" / f"val_{k}.JPEG", quality=95)
        annotations.append(f"val_{k}.JPEG\t{wnids[label]}\t0\t0\t{size - 1}\t{size - 1}")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return base


def make_cifar10(root: Path, per_batch: int = 5, test: int = 4) -> tuple[Path, np.ndarray, np.ndarray]:
    """cifar-10-batches-py with 5 training batches of `per_batch` images; returns (folder, images uint8
    [N, 3, 32, 32], labels [N]) of the training split."""
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": y}, f)
        if name != "test_batch":
            images.append(x)
            labels += y
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f)
    return base, np.concatenate(images), np.asarray(labels)


def make_mds(out_dir: Path, num_samples: int = 16, shape: tuple[int, ...] = (3, 8, 8), num_classes: int = 4,
             dtype: str = "uint8", seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """An MDS dataset written by the converter from random arrays; returns (folder, x [N, *shape], labels [N]).
    Sample i has label i % num_classes, and x[i, 0, 0, 0] == x[i, 0, 0, -1] == i % 256, so that its id can be
    read back from a batch, flipped or not."""
    from diffscale.data.converters import convert

    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        x = rng.integers(0, 256, (num_samples, *shape), dtype=np.uint8)
    else:
        x = rng.standard_normal((num_samples, *shape)).astype(dtype)
    x[:, 0, 0, 0] = x[:, 0, 0, -1] = np.arange(num_samples) % 256
    labels = np.arange(num_samples) % num_classes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir.parent / f"{out_dir.name}.npz", x=x, y=labels,
             class_names=np.array([f"c{k}" for k in range(num_classes)]))
    convert("npz", out_dir.parent / f"{out_dir.name}.npz", out_dir, progress=False)
    return out_dir, x, labels


def write_imagenet64_pickle(path, data, labels, protocol=pickle.DEFAULT_PROTOCOL) -> None:
    """One file in the official format: {'data': uint8 [N, 12288], 'labels': list of 1-based int, 'mean'}."""
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": list(labels), "mean": data.mean(axis=0)}, f, protocol=protocol)


def make_imagenet64(root, batch_sizes=(5, 3), val=4) -> dict:
    """Downsampled ImageNet 64x64 as unpacked pickles in root/Imagenet64_train/train_data_batch_<k> and
    root/Imagenet64_val/val_data, and as the zips in root/zips: Imagenet64_train_part1.zip (batch 1, at the top
    level), Imagenet64_train_part2.zip (the others, inside a folder) and Imagenet64_val.zip. Returns the images
    uint8 [N, 3, 64, 64] and 0-based labels of each split. Labels include 1 and 1000 (-> 0 and 999)."""
    # numpy's array pickles name numpy._core.multiarray._reconstruct (protocol 2-4) or numpy._core.numeric.
    # _frombuffer (5), and bytes pickled with protocol 2 name _codecs.encode: the restricted unpickler allows these.
    rng = np.random.default_rng(0)
    (root / "Imagenet64_train").mkdir(parents=True)
    (root / "Imagenet64_val").mkdir()
    (root / "zips").mkdir()
    expected = {}
    files = [(f"Imagenet64_train/train_data_batch_{k}", n) for k, n in enumerate(batch_sizes, 1)]
    for split, split_files in (("train", files), ("val", [("Imagenet64_val/val_data", val)])):
        images, labels = [], []
        for i, (name, n) in enumerate(split_files):
            x = rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)
            y = [1, 1000, *rng.integers(1, 1001, n - 2).tolist()]
            # numpy pickles differ by protocol: 2 (bytes as _codecs.encode), 4 (the default) and 5 (_frombuffer)
            protocol = 5 if split == "val" else (4, 2)[i % 2]
            write_imagenet64_pickle(root / name, x.reshape(n, -1), y, protocol=protocol)
            images.append(x)
            labels += [label - 1 for label in y]
        expected[split] = (np.concatenate(images), np.asarray(labels))
    train = sorted((root / "Imagenet64_train").iterdir())
    with zipfile.ZipFile(root / "zips" / "Imagenet64_train_part1.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(train[0], train[0].name)
    with zipfile.ZipFile(root / "zips" / "Imagenet64_train_part2.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in train[1:]:
            zf.write(path, f"Imagenet64_train_part2/{path.name}")
    with zipfile.ZipFile(root / "zips" / "Imagenet64_val.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(root / "Imagenet64_val" / "val_data", "val_data")
    return expected


def make_latents_mds(out_dir: Path, num_samples: int = 16, latent_shape: tuple[int, int, int] = (4, 8, 8),
                     num_classes: int = 10, seed: int = 0) -> Path:
    """A latents dataset in tools/encode_latents.py's format (diffscale/data/latents.py), written by its own part
    writer from random moments: mean N(0, 1), log-variance in [-3, -1], float16; label i % num_classes."""
    from diffscale.data.latents import merge_parts, part_name, write_part
    from diffscale.data.mds import META_FILE

    rng = np.random.default_rng(seed)
    c, h, w = latent_shape
    mean = rng.standard_normal((num_samples, 2, c, h, w)).astype(np.float32)
    logvar = rng.uniform(-3, -1, (num_samples, 2, c, h, w)).astype(np.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_part(out_dir / part_name(0), [np.concatenate([mean, logvar], axis=2)],
               np.arange(num_samples) % num_classes, "float16")
    merge_parts(out_dir, 1)
    (out_dir / META_FILE).write_text(json.dumps({"kind": "latents", "scaling_factor": 0.18215, "num_samples":
                                                 num_samples, "class_names": [f"c{k}" for k in range(num_classes)]}))
    return out_dir
