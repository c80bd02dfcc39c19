"""Image datasets to MDS shards (the logic of tools/convert_dataset.py).

Every source becomes samples {'x': [C, H, W] array, 'label': int64} written with mosaicml-streaming's
MDSWriter as a fixed-shape `ndarray:<dtype>:C,H,W` column (raw bytes, no per-sample header) and an `int64`
column, so that diffscale/data/mds.py can memory-map the records. `diffscale.json` next to `index.json`
holds what the index cannot: class ids and names, resolution, channels, count, label histogram, source.

Sources (labels are class indices in sorted class-id order):
  tiny-imagenet  train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt, wnids.txt, words.txt
  imagefolder    <root>/<class>/**/<image>, one folder per class (images directly in <root>: unlabelled)
  cifar10        the python batches: data_batch_1..5 (train) or test_batch (val), batches.meta
  npz            `images`|`x` uint8 [N, H, W, C] or [N, C, H, W], or float [N, C, H, W] latents kept as they are;
                 optional `labels`|`y` and `class_names`
"""

import json
import multiprocessing
import pickle
import shutil
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from diffscale.data.mds import INDEX_FILE, META_FILE, MDSIndex, ShardStore

SOURCES = ("tiny-imagenet", "imagefolder", "cifar10", "npz")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
CHUNK = 256  # array samples prepared per step (bounded memory for large memory-mapped npz files)


class ConversionError(RuntimeError):
    """The input is not what its --source says, or the output failed its read-back check."""


@dataclass
class Listing:
    """A source before decoding: image files with labels, or arrays already in memory (or memory-mapped)."""

    class_ids: list[str]
    class_names: list[str]
    files: list[tuple[str, int]] | None = None  # (path, label) for file sources
    images: np.ndarray | None = None  # [N, C, H, W] for array sources
    labels: np.ndarray | None = None  # int64 [N] for array sources


@dataclass
class Report:
    out_dir: Path
    meta: dict  # what diffscale.json holds
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# ---------------------------------------------------------------------------------------------- images
def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """ADM's centre crop (EDM's dataset_tool 'center-crop-dhariwal'): halve with BOX filtering while the short
    side is at least 2R (cheap and alias-free), resize the short side to R with BICUBIC, crop the centre."""
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - resolution) // 2, (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def decode_image(path: str, resolution: int) -> np.ndarray:
    """uint8 [3, R, R] from an image file (grayscale, palette and CMYK become RGB). Raises on unreadable files."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    if img.size != (resolution, resolution):
        img = center_crop_resize(img, resolution)
    return np.asarray(img).transpose(2, 0, 1)


def _decode_task(task: tuple[str, int]) -> tuple[np.ndarray | None, str]:
    path, resolution = task
    try:
        return decode_image(path, resolution), ""
    except Exception as exc:  # any decoder error is reported with its path, never dropped silently
        return None, f"{type(exc).__name__}: {exc}"


def _resize_task(task: tuple[np.ndarray, int]) -> np.ndarray:
    image, resolution = task  # uint8 [C, H, W]
    img = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    out = np.asarray(center_crop_resize(img, resolution))
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------- sources
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def list_tiny_imagenet(root: Path, split: str) -> Listing:
    """Tiny ImageNet in its official layout (root = tiny-imagenet-200/ or the folder holding it)."""
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    if not (root / "wnids.txt").is_file():
        raise ConversionError(f"{root}: no wnids.txt; expected the tiny-imagenet-200 folder of the official zip")
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()})
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.strip()
    label_of = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files = [(str(p), label_of[w]) for w in wnids for p in _images_in(root / "train" / w / "images")]
    else:
        files = []
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            if not line.strip():
                continue
            name, wnid = line.split("\t")[:2]
            if wnid not in label_of:
                raise ConversionError(f"val_annotations.txt: {name} has class {wnid}, which is not in wnids.txt")
            files.append((str(root / "val" / "images" / name), label_of[wnid]))
    return Listing(wnids, [words.get(w, w) for w in wnids], files=files)


def list_imagefolder(root: Path) -> Listing:
    """One sub-folder per class (searched recursively); images directly in `root` make an unlabelled set."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _images_in(d))
    if classes:
        files = [(str(p), i) for i, c in enumerate(classes) for p in _images_in(root / c)]
    else:
        files = [(str(p), 0) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return Listing(classes, classes, files=files)


def load_cifar10(root: Path, split: str) -> Listing:
    """CIFAR-10's python batches (root = cifar-10-batches-py/ or the folder holding it)."""
    if not (root / "batches.meta").is_file() and (root / "cifar-10-batches-py" / "batches.meta").is_file():
        root = root / "cifar-10-batches-py"
    names = ["test_batch"] if split == "val" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in names + ["batches.meta"]:
        if not (root / name).is_file():
            raise ConversionError(f"{root}: no {name}; expected the cifar-10-batches-py folder")
    for name in names:
        with open(root / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official format is pickled dicts
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    with open(root / "batches.meta", "rb") as f:
        class_names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
    return Listing(class_names, class_names, images=np.concatenate(images), labels=np.concatenate(labels))


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz; members stored uncompressed are memory-mapped, so latents larger than RAM work."""
    arrays = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                arrays[key] = np.load(zf.open(info), allow_pickle=False)
                continue
            f.seek(info.header_offset + 26)  # local file header: name and extra-field lengths at byte 26
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise ConversionError(f"{path}: '{key}' holds Python objects; store plain arrays")
            arrays[key] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                    order="F" if fortran else "C")
    return arrays


def load_npz(path: Path) -> Listing:
    arrays = _npz_arrays(path)
    image_key = next((k for k in ("images", "x", "arr_0") if k in arrays), None)
    if image_key is None:
        raise ConversionError(f"{path}: no 'images' or 'x' array; it holds {sorted(arrays)}")
    images = arrays[image_key]
    if images.ndim == 3:  # [N, H, W] grayscale
        images = images[:, None]
    if images.ndim != 4:
        raise ConversionError(f"{path}: '{image_key}' has shape {images.shape}; expected [N, H, W, C] or [N, C, H, W]")
    if images.dtype == np.uint8 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW (a view; chunks are copied when written)
    label_key = next((k for k in ("labels", "y", "arr_1") if k in arrays), None)
    labels = np.zeros(len(images), np.int64) if label_key is None else np.asarray(arrays[label_key]).astype(np.int64)
    if labels.shape != (len(images),):
        raise ConversionError(f"{path}: {len(images)} images but '{label_key}' has shape {labels.shape}")
    if "class_names" in arrays:
        names = [str(n) for n in arrays["class_names"]]
    else:
        names = [] if label_key is None else [str(i) for i in range(int(labels.max()) + 1)]
    return Listing(names, names, images=images, labels=labels)


def list_source(source: str, path: Path, split: str) -> Listing:
    if not path.exists():
        raise ConversionError(f"--input {path}: not found")
    if source == "tiny-imagenet":
        return list_tiny_imagenet(path, split)
    if source == "imagefolder":
        return list_imagefolder(path)
    if source == "cifar10":
        return load_cifar10(path, split)
    if source == "npz":
        return load_npz(path)
    raise ConversionError(f"--source {source}: expected one of {', '.join(SOURCES)}")


# ---------------------------------------------------------------------------------------------- samples
def _file_samples(listing: Listing, resolution: int, pool: Pool | None, unreadable: list) -> Iterator[tuple | None]:
    tasks = [(path, resolution) for path, _ in listing.files]
    results = pool.imap(_decode_task, tasks, chunksize=32) if pool else map(_decode_task, tasks)
    for (path, label), (image, error) in zip(listing.files, results, strict=True):
        if image is None:
            unreadable.append((path, error))
            tqdm.write(f"unreadable: {path} ({error})")
            yield None  # keeps the progress bar counting inputs
        else:
            yield image, label


def _array_samples(listing: Listing, resolution: int, pool: Pool | None) -> Iterator[tuple]:
    images, labels = listing.images, listing.labels
    resize = images.shape[2:] != (resolution, resolution)
    for start in range(0, len(images), CHUNK):
        chunk = np.ascontiguousarray(images[start:start + CHUNK])
        if resize:
            tasks = [(image, resolution) for image in chunk]
            chunk = list(pool.imap(_resize_task, tasks, chunksize=16) if pool else map(_resize_task, tasks))
        yield from zip(chunk, labels[start:start + CHUNK].tolist(), strict=True)


def _output_shape(listing: Listing, resolution: int | None) -> tuple[tuple[int, int, int], np.dtype]:
    if listing.files is not None:
        if resolution is None:
            raise ConversionError("--resolution is required for image folders (their images differ in size)")
        return (3, resolution, resolution), np.dtype(np.uint8)
    c, h, w = listing.images.shape[1:]
    resolution = h if resolution is None and h == w else resolution
    if resolution is None:
        raise ConversionError(f"images are {h}x{w}: give --resolution to centre-crop them square")
    if listing.images.dtype != np.uint8 and (h, w) != (resolution, resolution):
        raise ConversionError(f"{listing.images.dtype} data (latents?) of {h}x{w} cannot be resized to {resolution}")
    return (c, resolution, resolution), listing.images.dtype


# ---------------------------------------------------------------------------------------------- writing
SHARD_BYTES = 1 << 26  # mosaic's default shard size: 64 MiB


def write_shards(out_dir: Path, samples: Iterator[tuple[np.ndarray, int] | None], shape: tuple[int, ...],
                 dtype: np.dtype, total: int, progress: bool = True) -> np.ndarray:
    """Write samples ([C, H, W] array, label; None for a skipped input) with MDSWriter; returns the labels
    written, int64 [n]."""
    from streaming import MDSWriter  # imported here: `streaming` takes seconds to import

    columns = {"x": f"ndarray:{dtype.name}:{','.join(map(str, shape))}", "label": "int64"}
    labels = []
    with MDSWriter(out=str(out_dir), columns=columns, size_limit=SHARD_BYTES) as writer:
        for sample in tqdm(samples, total=total, unit="img", desc=f"writing {out_dir.name}", disable=not progress):
            if sample is None:
                continue
            image, label = sample
            if image.shape != shape:
                raise ConversionError(f"sample {len(labels)} has shape {image.shape}, expected {shape}")
            writer.write({"x": image, "label": label})
            labels.append(label)
    return np.asarray(labels, dtype=np.int64)


def verify(out_dir: Path, meta: dict) -> None:
    """Read the output back: sample count and label histogram must equal what was written from the input, and
    our memory-mapped reader must agree with mosaic's own reader on the first and the last sample."""
    from streaming.base.format import reader_from_json

    index, _ = MDSIndex.open(str(out_dir), key="--output")
    store = ShardStore(index)
    labels = store.column("label")
    counts = np.bincount(labels, minlength=len(meta["label_counts"])) if labels.min() >= 0 else None
    if index.num_samples != meta["num_samples"] or counts is None or counts.tolist() != meta["label_counts"]:
        raise ConversionError(f"{out_dir}: read back {index.num_samples} samples with label histogram "
                              f"{None if counts is None else counts.tolist()}, expected {meta['num_samples']} "
                              f"and {meta['label_counts']}")
    shards = json.loads((out_dir / INDEX_FILE).read_text())["shards"]
    for sample_id in (0, index.num_samples - 1):
        shard = int(np.searchsorted(index.starts, sample_id, side="right") - 1)
        theirs = reader_from_json(str(out_dir), None, shards[shard]).get_item(sample_id - int(index.starts[shard]))
        ours = store.gather(np.array([sample_id]))
        if not (np.array_equal(theirs["x"], ours["x"][0]) and theirs["label"] == ours["label"][0]):
            raise ConversionError(f"{out_dir}: sample {sample_id} reads differently with mosaic's reader")


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConversionError(f"--output {out_dir} is not empty; pass --overwrite to replace it")
        if not (out_dir / INDEX_FILE).is_file():
            raise ConversionError(f"--output {out_dir}: refusing to delete a folder that is not an MDS dataset")
        shutil.rmtree(out_dir)


def convert(source: str, input_path: Path, out_dir: Path, resolution: int | None = None, workers: int = 1,
            split: str = "train", overwrite: bool = False, progress: bool = True) -> Report:
    """Convert one split of a source into MDS shards in `out_dir`, write diffscale.json and check the result.

    Unreadable image files are skipped, printed, and listed in the report and the metadata."""
    input_path, out_dir = Path(input_path).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    listing = list_source(source, input_path, split)
    total = len(listing.files) if listing.files is not None else len(listing.images)
    if total == 0:
        raise ConversionError(f"--input {input_path}: no images found for --source {source}")
    if resolution is None and source == "tiny-imagenet":
        resolution = 64
    shape, dtype = _output_shape(listing, resolution)
    _prepare_output(out_dir, overwrite)
    unreadable: list[tuple[str, str]] = []
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        samples = (_file_samples(listing, shape[-1], pool, unreadable) if listing.files is not None
                   else _array_samples(listing, shape[-1], pool))
        labels = write_shards(out_dir, samples, shape, dtype, total, progress)
    finally:
        if pool is not None:
            pool.terminate()
    if len(labels) == 0:
        raise ConversionError(f"--input {input_path}: none of the {total} images could be read")
    num_classes = len(listing.class_ids)
    if labels.min() < 0 or (num_classes and labels.max() >= num_classes):
        raise ConversionError(f"labels span [{labels.min()}, {labels.max()}] but there are {num_classes} classes")
    meta = {
        "format_version": 1, "source": source, "split": split, "input": str(input_path),
        "num_samples": len(labels), "shape": list(shape), "dtype": dtype.name, "resolution": shape[-1],
        "channels": shape[0], "class_ids": listing.class_ids, "class_names": listing.class_names,
        "label_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "unreadable": [path for path, _ in unreadable],
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    verify(out_dir, meta)
    return Report(out_dir, meta, unreadable)
