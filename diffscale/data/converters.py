"""Image datasets to MDS shards (the logic of tools/convert_dataset.py).

Every source becomes samples {'x': [C, H, W] array, 'label': int64} written with mosaicml-streaming's
MDSWriter as a fixed-shape `ndarray:<dtype>:C,H,W` column (raw bytes, no per-sample header) and an `int64`
column, so that diffscale/data/mds.py can memory-map the records. `diffscale.json` next to `index.json`
holds what the index cannot: class ids and names, resolution, channels, count, label histogram, source.

Sources (labels are class indices in sorted class-id order):
  tiny-imagenet  train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt, wnids.txt, words.txt
  imagefolder    <root>/<class>/**/<image>, one folder per class (images directly in <root>: unlabelled)
  cifar10        the python batches: data_batch_1..5 (train) or test_batch (val), batches.meta
  imagenet64     downsampled ImageNet 64x64 (Chrabaszcz et al. 2017): train_data_batch_1..10 (train) or val_data
                 (val), unpacked or read inside Imagenet64_train_part1/2.zip and Imagenet64_val.zip; labels 1..1000
                 become 0..999 and the class ids and names are the strings "0".."999" (the files carry no names)
  npz            `images`|`x` uint8 [N, H, W, C] or [N, C, H, W], or float [N, C, H, W] latents kept as they are;
                 optional `labels`|`y` and `class_names`

The pickled sources (cifar10, imagenet64) are read with a restricted unpickler: a pickle can call any global it
names (os.system, ...), so only the few globals numpy arrays need are resolved and any other one is refused.
"""

import codecs
import functools
import json
import multiprocessing
import pickle
import re
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from diffscale.data.mds import INDEX_FILE, META_FILE, WRITE_HASHES, MDSIndex, ShardStore
from diffscale.errors import DataError
from diffscale.utils.pickle_globals import numpy_globals

SOURCES = ("tiny-imagenet", "imagefolder", "cifar10", "imagenet64", "npz")
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
    # array sources too large to hold at once (imagenet64): loaders of (images [n, C, H, W], labels int64 [n]),
    # called in turn while writing so that one batch is decoded at a time
    batches: list[Callable[[], tuple[np.ndarray, np.ndarray]]] | None = None


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


# ---------------------------------------------------------------------------------------------- pickles
def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes (always with latin1), and only that."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (pickles use latin1 only)")
    return codecs.encode(text, "latin1", errors)


def _pickle_globals() -> dict[tuple[str, str], object]:
    """numpy arrays and scalars (utils/pickle_globals.py), protocol 5's buffer reconstructor, latin1 bytes and the
    plain builtins a dataset pickle may name."""
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
    allowed = {**numpy_globals(), ("_codecs", "encode"): _latin1_encode,
               **{("builtins", t.__name__): t for t in (bytes, bytearray, set, frozenset)}}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


_PICKLE_GLOBALS = _pickle_globals()


class SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, numbers, strings, bytes and numpy arrays; refuses every other global
    (ConversionError naming the file and the global) instead of importing and calling it."""

    def __init__(self, file, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):
        key = ("builtins" if module == "__builtin__" else module, name)  # Python 2 pickles say __builtin__
        if key not in _PICKLE_GLOBALS:
            raise ConversionError(f"{self.source}: refusing to unpickle the global {module}.{name}; only numpy "
                                  "arrays and plain Python values are read from dataset pickles")
        return _PICKLE_GLOBALS[key]


def load_pickle(file, source: str, encoding: str = "ASCII"):
    """pickle.load(file) through SafeUnpickler; anything but a readable pickle is a ConversionError naming
    `source` (the file, for messages)."""
    try:
        return SafeUnpickler(file, source, encoding=encoding).load()
    except ConversionError:
        raise
    except Exception as exc:  # truncated, corrupt or not a pickle at all (zip CRC errors included)
        raise ConversionError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


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
            batch = load_pickle(f, str(root / name), encoding="bytes")  # the official format is pickled dicts
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    with open(root / "batches.meta", "rb") as f:
        meta = load_pickle(f, str(root / "batches.meta"), encoding="bytes")
    class_names = [n.decode() for n in meta[b"label_names"]]
    return Listing(class_names, class_names, images=np.concatenate(images), labels=np.concatenate(labels))


IMAGENET64_SIDE, IMAGENET64_CLASSES, IMAGENET64_TRAIN_BATCHES = 64, 1000, 10
IMAGENET64_FOLDERS = ("Imagenet64_train", "Imagenet64_val", "Imagenet64_train_part1", "Imagenet64_train_part2")


def _imagenet64_key(name: str, split: str) -> int | None:
    """The batch number of a file or zip member of `split` (0 for val_data), None for other files."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if split == "val":
        return 0 if base == "val_data" else None
    match = re.fullmatch(r"train_data_batch_(\d+)", base)
    return int(match[1]) if match else None


def _imagenet64_zip_members(path: Path, split: str) -> dict[int, tuple[str, Callable]]:
    """{batch number: (name for messages, opener)} of the members of one zip, by base name (any folder)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [info.filename for info in zf.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConversionError(f"{path}: not a readable zip ({exc})") from exc
    found: dict[int, tuple[str, Callable]] = {}
    for member in names:
        key = _imagenet64_key(member, split)
        if key is None:
            continue
        if key in found:
            raise ConversionError(f"{path}: holds both {found[key][0]} and {member}; expected one of each")
        found[key] = (f"{path}:{member}", functools.partial(_ZipMember, path, member))
    return found


class _ZipMember:
    """A zip member opened for streaming decompression (never unpacked to disk); closes its archive too."""

    def __init__(self, path: Path, member: str):
        self.path, self.member = path, member

    def __enter__(self):
        self.archive = zipfile.ZipFile(self.path)
        try:
            self.handle = self.archive.open(self.member)
        except BaseException:
            self.archive.close()
            raise
        return self.handle

    def __exit__(self, *exc):
        self.handle.close()
        self.archive.close()


def _imagenet64_inputs(path: Path, split: str) -> list[tuple[str, Callable]]:
    """(name for messages, opener) of each file of `split`, in batch order, from unpacked pickles (in `path` or
    its Imagenet64_* folders), from the Imagenet64_*.zip archives in `path`, or from the one zip `path`."""
    what = "val_data" if split == "val" else "train_data_batch_1..10"
    zips_expected = "Imagenet64_val.zip" if split == "val" else "Imagenet64_train_part1.zip / _part2.zip"
    if path.is_file():
        found = _imagenet64_zip_members(path, split)
        if not found:
            raise ConversionError(f"{path}: no {what} member in this zip (split {split}); expected "
                                  f"{zips_expected} of the official downsampled ImageNet 64x64")
        return [found[k] for k in sorted(found)]
    found: dict[int, tuple[str, Callable]] = {}
    for folder in (path, *(path / name for name in IMAGENET64_FOLDERS)):
        for file in sorted(folder.iterdir()) if folder.is_dir() else []:
            key = _imagenet64_key(file.name, split)
            if key is None or not file.is_file():
                continue
            if key in found:
                raise ConversionError(f"--input {path}: both {found[key][0]} and {file}; keep one of them")
            found[key] = (str(file), functools.partial(open, file, "rb"))
    if not found:  # no unpacked pickles: read them inside the official zips
        for archive in sorted(p for p in path.iterdir() if p.suffix.lower() == ".zip"
                              and p.name.lower().startswith("imagenet64") and p.is_file()):
            for key, member in _imagenet64_zip_members(archive, split).items():
                if key in found:
                    raise ConversionError(f"--input {path}: both {found[key][0]} and {member[0]}; keep one of them")
                found[key] = member
    if not found:
        raise ConversionError(f"--input {path}: no {what} (in it or in {'/, '.join(IMAGENET64_FOLDERS)}/) and no "
                              f"{zips_expected} holding it; expected the official downsampled ImageNet 64x64 files")
    if split == "train":
        missing = [f"train_data_batch_{k}" for k in range(1, max(found) + 1) if k not in found]
        if missing:
            raise ConversionError(f"--input {path}: {', '.join(missing)} missing (found "
                                  f"{', '.join(f'train_data_batch_{k}' for k in sorted(found))})")
        if max(found) != IMAGENET64_TRAIN_BATCHES:
            tqdm.write(f"note: {path} holds train_data_batch_1..{max(found)}; the official train split has "
                       f"{IMAGENET64_TRAIN_BATCHES} batches (Imagenet64_train_part1.zip and _part2.zip)")
    return [found[k] for k in sorted(found)]


def load_imagenet64_batch(source: str, opener: Callable) -> tuple[np.ndarray, np.ndarray]:
    """One official file: a pickled dict with `data` uint8 [N, 3 * 64 * 64] channel-major and `labels` 1..1000
    (and `mean`, unused); returns (uint8 [N, 3, 64, 64], int64 [N] labels 0..999)."""
    try:
        with opener() as f:
            batch = load_pickle(f, source, encoding="latin1")  # latin1: also numpy arrays pickled by Python 2
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConversionError(f"{source}: cannot be read ({exc})") from exc
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        keys = sorted(map(str, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise ConversionError(f"{source}: holds {keys}; expected a dict with 'data' and 'labels'")
    data, side = batch["data"], IMAGENET64_SIDE
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * side * side):
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ConversionError(f"{source}: 'data' is {got}; expected uint8 [N, {3 * side * side}] "
                              f"(3 x {side} x {side}, channel-major)")
    labels = np.asarray(batch["labels"])
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ConversionError(f"{source}: {len(data)} images but 'labels' is {labels.dtype} {list(labels.shape)}; "
                              f"expected {len(data)} integers")
    bad = np.flatnonzero((labels < 1) | (labels > IMAGENET64_CLASSES))
    if len(bad):
        raise ConversionError(f"{source}: label {labels[bad[0]]} (image {bad[0]}, {len(bad)} in all) is outside "
                              f"1..{IMAGENET64_CLASSES}; the official labels are 1-based")
    return data.reshape(-1, 3, side, side), labels.astype(np.int64) - 1


def list_imagenet64(path: Path, split: str) -> Listing:
    """Downsampled ImageNet 64x64; the files are decoded one at a time while writing (each train batch is
    ~1.5 GB). Labels 0..999 are the official 1..1000 minus one; class ids and names are "0".."999"."""
    loaders = [functools.partial(load_imagenet64_batch, source, opener)
               for source, opener in _imagenet64_inputs(path, split)]
    names = [str(k) for k in range(IMAGENET64_CLASSES)]
    return Listing(names, list(names), batches=loaders)


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
    if source == "imagenet64":
        return list_imagenet64(path, split)
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


def _array_samples(images: np.ndarray, labels: np.ndarray, resolution: int, pool: Pool | None,
                   copy: bool = False) -> Iterator[tuple]:
    """(image, label) of arrays in memory; `copy`: chunks are copied out of `images`, so that no sample yielded
    keeps the whole array alive."""
    resize = images.shape[2:] != (resolution, resolution)
    for start in range(0, len(images), CHUNK):
        chunk = np.array(images[start:start + CHUNK]) if copy else np.ascontiguousarray(images[start:start + CHUNK])
        if resize:
            tasks = [(image, resolution) for image in chunk]
            chunk = list(pool.imap(_resize_task, tasks, chunksize=16) if pool else map(_resize_task, tasks))
        yield from zip(chunk, labels[start:start + CHUNK].tolist(), strict=True)


def _batch_samples(listing: Listing, pending: list[tuple[np.ndarray, np.ndarray]], resolution: int,
                   pool: Pool | None) -> Iterator[tuple]:
    """(image, label) of a batched array source; `pending` holds the first batch, already decoded. Each batch
    is released before the next one is decoded."""
    for load in listing.batches:
        images, labels = pending.pop() if pending else load()
        yield from _array_samples(images, labels, resolution, pool, copy=True)
        del images, labels


def _output_shape(listing: Listing, resolution: int | None,
                  images: np.ndarray | None = None) -> tuple[tuple[int, int, int], np.dtype]:
    """Shape and dtype of the samples written; `images`: the arrays (a batch's for batched sources)."""
    if listing.files is not None:
        if resolution is None:
            raise ConversionError("--resolution is required for image folders (their images differ in size)")
        return (3, resolution, resolution), np.dtype(np.uint8)
    images = listing.images if images is None else images
    c, h, w = images.shape[1:]
    resolution = h if resolution is None and h == w else resolution
    if resolution is None:
        raise ConversionError(f"images are {h}x{w}: give --resolution to centre-crop them square")
    if images.dtype != np.uint8 and (h, w) != (resolution, resolution):
        raise ConversionError(f"{images.dtype} data (latents?) of {h}x{w} cannot be resized to {resolution}")
    return (c, resolution, resolution), images.dtype


# ---------------------------------------------------------------------------------------------- writing
SHARD_BYTES = 1 << 26  # mosaic's default shard size: 64 MiB


def write_shards(out_dir: Path, samples: Iterator[tuple[np.ndarray, int] | None], shape: tuple[int, ...],
                 dtype: np.dtype, total: int | None, progress: bool = True) -> np.ndarray:
    """Write samples ([C, H, W] array, label; None for a skipped input) with MDSWriter; returns the labels
    written, int64 [n]. `total` (None: not known ahead) sizes the progress bar."""
    from streaming import MDSWriter  # imported here: `streaming` takes seconds to import

    columns = {"x": f"ndarray:{dtype.name}:{','.join(map(str, shape))}", "label": "int64"}
    labels = []
    with MDSWriter(out=str(out_dir), columns=columns, size_limit=SHARD_BYTES, hashes=list(WRITE_HASHES)) as writer:
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
    """Read the output back: sample count and label histogram must equal what was written from the input, our
    memory-mapped reader must agree with mosaic's own reader on the first and the last sample, and every shard
    must match the content hashes recorded for it."""
    index, _ = MDSIndex.open(str(out_dir), key="--output")
    store = ShardStore(index)
    labels = store.column("label")
    counts = np.bincount(labels, minlength=len(meta["label_counts"])) if labels.min() >= 0 else None
    if index.num_samples != meta["num_samples"] or counts is None or counts.tolist() != meta["label_counts"]:
        raise ConversionError(f"{out_dir}: read back {index.num_samples} samples with label histogram "
                              f"{None if counts is None else counts.tolist()}, expected {meta['num_samples']} "
                              f"and {meta['label_counts']}")
    check_against_mosaic(out_dir, index, store, "x")
    check_hashes(store)


def check_hashes(store: ShardStore) -> None:
    """Every shard written matches the content hashes its index.json records (a ConversionError names the first
    that does not)."""
    try:
        store.verify_hashes()
    except DataError as exc:
        raise ConversionError(str(exc)) from None


def check_against_mosaic(out_dir: Path, index: MDSIndex, store: ShardStore, column: str) -> None:
    """Our memory-mapped reader agrees with mosaic's own reader on `column` and the label of the first and the
    last sample of the dataset at `out_dir`."""
    from streaming.base.format import reader_from_json

    shards = json.loads((out_dir / INDEX_FILE).read_text())["shards"]
    for sample_id in (0, index.num_samples - 1):
        shard = int(np.searchsorted(index.starts, sample_id, side="right") - 1)
        theirs = reader_from_json(str(out_dir), None, shards[shard]).get_item(sample_id - int(index.starts[shard]))
        ours = store.gather(np.array([sample_id]))
        if not (np.array_equal(theirs[column], ours[column][0]) and theirs["label"] == ours["label"][0]):
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

    Unreadable image files are skipped, printed, and listed in the report and the metadata. If writing fails
    (a batched source's later file is not what it should be) the partial output is removed."""
    input_path, out_dir = Path(input_path).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    listing = list_source(source, input_path, split)
    # A batched source's first batch is decoded before the output is touched, so that a wrong input fails early.
    pending = [listing.batches[0]()] if listing.batches else []
    if listing.files is not None:
        total = len(listing.files)
    else:
        total = None if listing.batches is not None else len(listing.images)  # batched: known once all are read
    if total == 0:
        raise ConversionError(f"--input {input_path}: no images found for --source {source}")
    if resolution is None and source == "tiny-imagenet":
        resolution = 64
    shape, dtype = _output_shape(listing, resolution, pending[0][0] if pending else None)
    _prepare_output(out_dir, overwrite)
    unreadable: list[tuple[str, str]] = []
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        if listing.files is not None:
            samples = _file_samples(listing, shape[-1], pool, unreadable)
        elif listing.batches is not None:
            samples = _batch_samples(listing, pending, shape[-1], pool)
        else:
            samples = _array_samples(listing.images, listing.labels, shape[-1], pool)
        labels = write_shards(out_dir, samples, shape, dtype, total, progress)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # emptied by _prepare_output: what is there is partial output
        raise
    finally:
        if pool is not None:
            pool.terminate()
    if len(labels) == 0:
        raise ConversionError(f"--input {input_path}: " + (f"none of the {total} images could be read" if total
                                                           else f"no images found for --source {source}"))
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
