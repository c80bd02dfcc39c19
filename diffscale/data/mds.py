"""Read MDS shards (mosaicml-streaming's format) without importing the `streaming` package.

An MDS shard is `num_samples: uint32`, `offsets: uint32[num_samples + 1]`, the writer's JSON config, then the
samples back to back. A sample holds the uint32 sizes of its variable-size columns, then its columns in the order
of index.json (mosaic sorts them by name).

Fast path. When every column has a fixed size (a `ndarray:<dtype>:<shape>` image and an `int64` label, as
tools/convert_dataset.py writes them) every sample is a record of the same length, so a shard memory-maps as
a `[num_samples, record_bytes]` uint8 array and a batch is gathered with one fancy index per shard touched:
no per-example Python and no per-example decode.

What else mosaic's MDSWriter commonly writes is read too:
- compressed shards (zstd, gz, bz2, br, snappy, at any level): the first process that needs a shard (a DataLoader
  worker, usually) decompresses it once into the uncompressed file index.json names, next to the shard as mosaic's
  own reader does (under the temp folder when the dataset folder is read-only), and memory-maps that: a compressed
  fixed-size dataset takes the fast path from then on, at the cost of its uncompressed size on disk;
- variable-size columns: `png`, `jpeg` and `pil` images, decoded with mosaic's decoders and converted to RGB
  uint8 [3, H, W] as the fast path gives images, and `ndarray` with its dtype or shape stored per sample. One Python
  step per sample; the first sample sets the shape, and a sample of another shape is an error (batches need one);
- columns that are not arrays (`str`, `json`, `bytes`, lists, ...) are skipped: `MDSIndex.unread`.

Why not mosaic's StreamingDataset for reading: importing `streaming` costs 4-12 s per process (it pulls in
transformers), which every `tools/train.py` run, loader worker and test would pay; and its sample order depends on
the batch size, while the curation hook changes the batch size mid-run. Mosaic's decompressors and decoders are
called from their own modules, loaded without the package (`_mosaic`); remote datasets are fetched with mosaic's
downloaders (imported only then).
"""

import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np

from diffscale.errors import ConfigError, DataError

INDEX_FILE = "index.json"  # mosaic's index of the shards
META_FILE = "diffscale.json"  # ours, next to it: class names, resolution, source, label counts
CONVERT_HINT = ("convert images with tools/convert_dataset.py --source <tiny-imagenet|imagefolder|cifar10|imagenet64|"
                "npz> --input <path> --output <dir>, or write MDS shards with mosaic's MDSWriter")
_SCALAR_ENCODINGS = {"int": "int64", **{t: t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16",
                                                        "uint32", "uint64", "float16", "float32", "float64")}}
IMAGE_ENCODINGS = ("png", "jpeg", "pil")  # decoded to PIL images by mosaic
SUPPORTED_ENCODINGS = "ndarray[:<dtype>[:<shape>]], png, jpeg, pil, int and the numeric scalars (int8 ... float64)"
# mosaic's modules the reader calls; both need only numpy, PIL and the compressors, not the rest of `streaming`
_MOSAIC_FILES = {"compression": "base/compression.py", "encodings": "base/format/mds/encodings.py"}
# Content hashes our writers put into index.json (MDSWriter(hashes=...)): sha1 for mosaic's own reader
# (StreamingDataset(validate_hash='sha1')), xxh64 because it checks at several GB/s (verify_hashes uses it first).
WRITE_HASHES = ("sha1", "xxh64")
_mosaic_modules: dict[str, ModuleType] = {}


@dataclass(frozen=True)
class Column:
    """A column read as arrays: where it sits in a fixed-size record, and what it is read as."""

    offset: int | None  # bytes from the record start; None unless every column has a fixed size
    nbytes: int | None  # stored bytes per sample; None for variable-size encodings
    dtype: np.dtype | None  # as read (images: uint8); variable-size columns: from the first sample
    shape: tuple[int, ...] | None  # as read, () for scalars (images: (3, H, W)); variable-size: the first sample's
    encoding: str = ""  # mosaic's name for it
    position: int = 0  # index in the shard's column order


def _mosaic(name: str) -> ModuleType:
    """mosaic's `compression` or MDS `encodings` module. Unless `streaming` is imported already, it is loaded from
    its file: importing it as `streaming.base...` runs streaming/__init__, seconds in every loader worker."""
    if name not in _mosaic_modules:
        relative = _MOSAIC_FILES[name]
        qualified = "streaming." + relative.removesuffix(".py").replace("/", ".")
        module = sys.modules.get(qualified)
        if module is None:
            spec = importlib.util.find_spec("streaming")  # finds the package without running it
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError("reading compressed or png / jpeg / pil MDS shards needs mosaicml-streaming "
                                  "(pip install mosaicml-streaming)")
            path = Path(spec.submodule_search_locations[0]) / relative
            if path.is_file():
                file_spec = importlib.util.spec_from_file_location(f"diffscale_mosaic_{name}", path)
                module = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(module)
            else:  # another mosaic layout: the slow import still works
                module = importlib.import_module(qualified)
        _mosaic_modules[name] = module
    return _mosaic_modules[name]


def _parse_encoding(encoding: str) -> tuple[np.dtype, tuple[int, ...]] | None:
    """dtype and shape of a fixed-size MDS encoding, None for variable-size ones (str, jpeg, pil, ...)."""
    if encoding in _SCALAR_ENCODINGS:
        return np.dtype(_SCALAR_ENCODINGS[encoding]), ()
    parts = encoding.split(":")
    if parts[0] == "ndarray" and len(parts) == 3 and parts[1] and parts[2]:
        return np.dtype(parts[1]), tuple(int(d) for d in parts[2].split(","))
    return None


def _is_array_encoding(encoding: str) -> bool:
    """Variable-size encodings that decode to one array per sample: images and ndarrays of stored dtype / shape."""
    return encoding in IMAGE_ENCODINGS or encoding.split(":")[0] == "ndarray"


def column_layout(names: Sequence[str], encodings: Sequence[str], sizes: Sequence[int | None]
                  ) -> tuple[dict[str, Column], dict[str, str], int | None]:
    """The columns read as arrays, the columns skipped ({name: encoding}) and the record length in bytes when every
    column has a fixed size (else None)."""
    fixed = all(sizes)  # mosaic treats a size of 0 as variable too
    columns, unread, offset = {}, {}, 0
    for position, (name, encoding, size) in enumerate(zip(names, encodings, sizes, strict=True)):
        parsed = _parse_encoding(encoding) if size else None
        if parsed is not None:
            dtype, shape = parsed
            if dtype.itemsize * math.prod(shape) != size:
                raise ValueError(f"column '{name}': encoding '{encoding}' does not match its size {size}")
            columns[name] = Column(offset if fixed else None, size, dtype, shape, encoding, position)
        elif not size and _is_array_encoding(encoding):
            columns[name] = Column(None, None, None, None, encoding, position)
        else:
            unread[name] = encoding
        offset += size or 0
    return columns, unread, offset if fixed else None


def _shard_columns(shard: dict) -> tuple[tuple, tuple, tuple]:
    """(names, encodings, sizes) of one shard entry of index.json; ValueError if it is not MDS."""
    if shard.get("format") != "mds":
        raise ValueError(f"shard {shard.get('raw_data', {}).get('basename')}: format '{shard.get('format')}'; the "
                         "loader reads MDS shards (mosaic's MDSWriter) only")
    return tuple(shard["column_names"]), tuple(shard["column_encodings"]), tuple(shard["column_sizes"])


def _check_compression(algo: str | None, shard: str) -> None:
    if algo and not _mosaic("compression").is_compression(algo):
        known = sorted(a for a in _mosaic("compression").get_compressions() if ":" not in a)
        raise ValueError(f"shard {shard}: compression '{algo}' is not one mosaic decompresses: "
                         f"{', '.join(known)} (optionally with :<level>)")


def sample_spans(sample: np.ndarray, sizes: Sequence[int | None]) -> list[tuple[int, int]]:
    """[begin, end) of each column inside one sample (uint8): the uint32 sizes of the variable-size columns come
    first, then the columns in order."""
    num_variable = sum(1 for size in sizes if not size)
    variable = iter(np.frombuffer(sample, "<u4", count=num_variable).tolist())
    spans, begin = [], 4 * num_variable
    for size in sizes:
        end = begin + (size or next(variable))
        spans.append((begin, end))
        begin = end
    if begin != len(sample):
        raise ValueError(f"a sample of {len(sample)} bytes holds columns of {begin} bytes")
    return spans


def decode_value(column: Column, raw: np.ndarray) -> np.ndarray:
    """One sample's value of `column` from its bytes: fixed-size columns in place, images (through mosaic's
    decoders) as RGB uint8 [3, H, W], like the fixed-size images of the fast path."""
    if column.nbytes is not None:
        return np.frombuffer(raw, column.dtype).reshape(column.shape)
    value = _mosaic("encodings").mds_decode(column.encoding, raw.tobytes())
    if column.encoding in IMAGE_ENCODINGS:
        rgb = value if value.mode == "RGB" else value.convert("RGB")  # convert copies even an RGB image
        return np.asarray(rgb).transpose(2, 0, 1)  # PIL is [H, W, C]
    return np.asarray(value)


def _hasher(algo: str):
    """A fresh hash object for one of mosaic's algorithm names, or None if we cannot compute it."""
    if algo.startswith("xxh"):
        import xxhash  # mosaicml-streaming's own dependency

        return getattr(xxhash, algo, lambda: None)()
    try:
        return hashlib.new(algo)
    except ValueError:
        return None


def file_hash(path: Path, algo: str) -> str:
    """Hex digest of a file as mosaic's MDSWriter computes it (of the bytes written, read in 16 MiB chunks)."""
    h = _hasher(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def is_remote(path: str) -> bool:
    return "://" in str(path)


def fetch(remote_root: str, local_root: Path, relative: str, timeout_s: float) -> Path:
    """Download `remote_root/relative` into `local_root/relative` (atomic: concurrent ranks may race)."""
    from streaming.base.storage import CloudDownloader  # heavy import, only for remote datasets

    target = local_root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    part.unlink(missing_ok=True)  # left by a killed process that had our pid
    source = f"{remote_root.rstrip('/')}/{relative}" if is_remote(remote_root) else str(Path(remote_root) / relative)
    CloudDownloader.direct_download(source, str(part), timeout_s)
    os.replace(part, target)
    return target


def _write_atomic(data: bytes, targets: Sequence[Path]) -> Path:
    """Write `data` to the first of `targets` that can be written, through a renamed part file (loader workers
    may race for one shard); returns it."""
    error: OSError | None = None
    for target in targets:
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(data)
            os.replace(part, target)
            return target
        except OSError as exc:  # a read-only dataset folder: try the next place
            error = exc
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
    raise OSError(f"cannot write a decompressed shard to {', '.join(map(str, targets))}: {error}")


class MDSIndex:
    """One dataset directory: its shards, the columns they share and our metadata (may be empty)."""

    def __init__(self, root: Path, index: dict, meta: dict):
        self.root, self.meta = root, meta
        shards = index["shards"]
        if not shards:
            raise ValueError(f"{root / INDEX_FILE} lists no shards")
        layout = _shard_columns(shards[0])
        if any(_shard_columns(shard) != layout for shard in shards[1:]):
            raise ValueError(f"{root / INDEX_FILE}: shards have different columns")
        self.column_encodings = dict(zip(layout[0], layout[1], strict=True))  # every column, in the shards' order
        self.column_sizes = layout[2]
        self.columns, self.unread, self.record_bytes = column_layout(*layout)
        self.compressions = [shard.get("compression") or None for shard in shards]
        stored = [shard["zip_data"] if algo else shard["raw_data"]
                  for shard, algo in zip(shards, self.compressions, strict=True)]
        for algo, file in zip(self.compressions, stored, strict=True):
            _check_compression(algo, file["basename"])
        self.basenames = [f["basename"] for f in stored]  # the files as stored (compressed: the zip_data)
        self.hashes = [f.get("hashes") or {} for f in stored]  # {algorithm: hex digest} of each stored file
        self.shard_bytes = [int(f["bytes"]) for f in stored]
        self.raw_basenames = [s["raw_data"]["basename"] for s in shards]  # uncompressed, decompressed into
        self.raw_bytes = [int(s["raw_data"]["bytes"]) for s in shards]
        counts = np.array([s["samples"] for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # [num_shards + 1] first sample id of each
        self.num_samples = int(self.starts[-1])

    def learn_shapes(self, store: "ShardStore") -> None:
        """dtype and shape of the variable-size columns from the first sample (an image: uint8 (3, H, W))."""
        pending = [name for name, c in self.columns.items() if c.shape is None]
        if pending and self.num_samples:
            values = store.sample(0, pending)
            for name in pending:
                self.columns[name] = replace(self.columns[name], dtype=values[name].dtype, shape=values[name].shape)

    @classmethod
    def open(cls, path: str, local: str | None = None, key: str = "data.train", timeout_s: float = 60.0
             ) -> tuple["MDSIndex", str | None]:
        """The index at `path` (a directory, or a remote URI cached in `local`), and the remote root if any.
        A missing dataset is a ConfigError naming `<key>.path`."""
        path = str(path)
        if is_remote(path) and local is None:
            raise ConfigError(f"{key}.path: '{path}' is remote; set {key}.local to a local cache directory")
        remote = path if local is not None else None
        root = Path(local if local is not None else path).expanduser()
        if remote is not None:  # refresh the small files; shards are fetched on first use
            try:
                fetch(remote, root, INDEX_FILE, timeout_s)
            except Exception as exc:  # any downloader's error: say which path failed
                raise ConfigError(f"{key}.path: cannot fetch {INDEX_FILE} from '{path}' ({exc}); check the address "
                                  "and the storage credentials mosaic's downloaders read") from exc
            try:
                fetch(remote, root, META_FILE, timeout_s)
            except Exception:  # metadata is optional: MDS datasets written by other tools lack it
                pass
        if not (root / INDEX_FILE).is_file():
            raise ConfigError(f"{key}.path: no MDS dataset at '{path}' ({INDEX_FILE} not found); " + CONVERT_HINT)
        index = json.loads((root / INDEX_FILE).read_text())
        meta_file = root / META_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        ix = cls(root, index, meta)
        ix.learn_shapes(ShardStore(ix, remote, timeout_s))
        return ix, remote


def _scratch_dir(root: Path) -> Path:
    """Where decompressed shards go when the dataset folder cannot be written: one folder per dataset."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "diffscale-mds" / digest


class ShardStore:
    """Random access to the samples of an MDSIndex. Memory maps are opened lazily per process (a DataLoader
    worker opens its own) and at most `max_open` are kept, because each holds a file descriptor."""

    def __init__(self, index: MDSIndex, remote: str | None = None, timeout_s: float = 60.0, max_open: int = 256):
        self.index, self.remote, self.timeout_s, self.max_open = index, remote, timeout_s, max_open
        self._open: OrderedDict[tuple[str, int], object] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}  # memory maps do not travel to other processes

    # ------------------------------------------------------------------ files
    def _stored(self, shard: int) -> Path:
        """The shard's file as index.json lists it (compressed: the zip), fetched first when remote."""
        ix = self.index
        path = ix.root / ix.basenames[shard]
        if not path.is_file() or path.stat().st_size != ix.shard_bytes[shard]:
            if self.remote is None:
                size = path.stat().st_size if path.is_file() else None
                raise DataError(f"shard {path}: {'missing' if size is None else f'truncated ({size} bytes)'}, "
                                f"{ix.root / INDEX_FILE} says {ix.shard_bytes[shard]} bytes")
            path = fetch(self.remote, ix.root, ix.basenames[shard], self.timeout_s)
        return path

    def _uncompressed(self, shard: int) -> Path:
        """The shard's uncompressed file: the stored one, or a decompressed copy made on first use."""
        ix = self.index
        if ix.compressions[shard] is None:
            return self._stored(shard)
        zipped = ix.root / ix.basenames[shard]
        targets = [ix.root / ix.raw_basenames[shard], _scratch_dir(ix.root) / ix.raw_basenames[shard]]
        for target in targets:  # valid if complete and not older than the zip (a rewritten dataset)
            if (target.is_file() and target.stat().st_size == ix.raw_bytes[shard]
                    and (not zipped.is_file() or target.stat().st_mtime >= zipped.stat().st_mtime)):
                return target
        zipped = self._stored(shard)
        try:
            data = _mosaic("compression").decompress(ix.compressions[shard], zipped.read_bytes())
        except Exception as exc:  # each decompressor raises its own error on a corrupted stream
            raise DataError(f"shard {zipped}: does not decompress with {ix.compressions[shard]} "
                            f"({type(exc).__name__}: {exc})") from None
        if len(data) != ix.raw_bytes[shard]:
            raise DataError(f"shard {zipped}: decompresses to {len(data)} bytes, {ix.root / INDEX_FILE} says "
                            f"{ix.raw_bytes[shard]}")
        return _write_atomic(data, targets)

    def _cached(self, kind: str, shard: int, build: Callable[[int], object]) -> object:
        """`build(shard)`, kept in the LRU of open shards."""
        key = (kind, shard)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        value = self._open[key] = build(shard)
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return value

    def _map(self, shard: int) -> tuple[Path, np.ndarray, np.ndarray]:
        """(path, the uncompressed shard memory-mapped as uint8, its sample offsets int64 [count + 1])."""
        ix = self.index
        path = self._uncompressed(shard)
        data = np.memmap(path, dtype=np.uint8, mode="r")
        count = int(ix.starts[shard + 1] - ix.starts[shard])
        if len(data) < 4 * (count + 2):
            raise DataError(f"shard {path}: {len(data)} bytes cannot hold the header of {count} samples")
        offsets = np.frombuffer(data, dtype="<u4", count=count + 1, offset=4).astype(np.int64)
        if (int(np.frombuffer(data, dtype="<u4", count=1)[0]) != count or np.any(np.diff(offsets) < 0)
                or offsets[-1] > len(data) or offsets[0] < 4 * (count + 2)):
            raise DataError(f"shard {path}: corrupted header (it does not describe the {count} samples "
                            f"{INDEX_FILE} lists)")
        return path, data, offsets

    def records(self, shard: int) -> np.ndarray:
        """uint8 [num_samples_in_shard, record_bytes], memory-mapped (fixed-size columns only)."""
        return self._cached("records", shard, self._open_records)

    def _open_records(self, shard: int) -> np.ndarray:
        ix = self.index
        path, data, offsets = self._map(shard)
        if np.any(np.diff(offsets) != ix.record_bytes):
            bad = int(np.flatnonzero(np.diff(offsets) != ix.record_bytes)[0])
            raise DataError(f"shard {path}: corrupted header at record {bad} (records of {ix.record_bytes} B "
                            f"expected)")
        return data[offsets[0]:offsets[-1]].reshape(len(offsets) - 1, ix.record_bytes)

    def samples(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(the uncompressed shard, uint8, memory-mapped; its sample offsets int64 [count + 1])."""
        return self._cached("samples", shard, lambda s: self._map(s)[1:])

    # ------------------------------------------------------------------ samples
    def gather(self, ids: np.ndarray, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Columns `names` (default: every column read as arrays, index.columns) of the samples `ids` (int64 [n]),
        each [n, *shape] in its dtype."""
        names = list(self.index.columns if names is None else names)
        if self.index.record_bytes is not None:
            return self._gather_records(ids, names)
        return self._gather_samples(ids, names)

    def _gather_records(self, ids: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        ix = self.index
        shard_of = np.searchsorted(ix.starts, ids, side="right") - 1
        rows = np.empty((len(ids), ix.record_bytes), dtype=np.uint8)
        for shard in np.unique(shard_of):  # one fancy index per shard touched, not one per example
            where = np.flatnonzero(shard_of == shard)
            rows[where] = self.records(int(shard))[ids[where] - ix.starts[shard]]
        return {name: np.ascontiguousarray(rows[:, c.offset:c.offset + c.nbytes]).view(c.dtype)
                .reshape(len(ids), *c.shape) for name, c in ((n, ix.columns[n]) for n in names)}

    def _gather_samples(self, ids: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Variable-size samples: decoded one by one into arrays of the dataset's shape."""
        ix = self.index
        out = {name: np.empty((len(ids), *ix.columns[name].shape), ix.columns[name].dtype) for name in names}
        shard_of = np.searchsorted(ix.starts, ids, side="right") - 1
        for shard in np.unique(shard_of):
            data, offsets = self.samples(int(shard))
            for j in np.flatnonzero(shard_of == shard):
                local = int(ids[j] - ix.starts[shard])
                values = self._decode(data[offsets[local]:offsets[local + 1]], names, int(ids[j]))
                for name in names:
                    self._check_shape(name, values[name], int(ids[j]))
                    out[name][j] = values[name]
        return out

    def _decode(self, sample: np.ndarray, names: list[str], sample_id: int) -> dict[str, np.ndarray]:
        ix = self.index
        try:
            spans = sample_spans(sample, ix.column_sizes)
            return {name: decode_value(ix.columns[name], sample[slice(*spans[ix.columns[name].position])])
                    for name in names}
        except Exception as exc:  # a corrupt sample or an image PIL cannot read: say which one
            raise DataError(f"{self.where(sample_id)} cannot be read ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())})") from None

    def _check_shape(self, name: str, value: np.ndarray, sample_id: int) -> None:
        c = self.index.columns[name]
        if value.shape != c.shape or value.dtype != c.dtype:
            raise ValueError(f"{self.index.root}: sample {sample_id} has column '{name}' of shape {value.shape} "
                             f"{value.dtype}, sample 0 has {c.shape} {c.dtype}; the loader batches one shape: "
                             "resize the images to one size (tools/convert_dataset.py --resolution)")

    def where(self, sample_id: int) -> str:
        """'shard <path> record <i> (sample <id>)' for error messages."""
        ix = self.index
        shard = int(np.searchsorted(ix.starts, sample_id, side="right") - 1)
        return (f"shard {ix.root / ix.basenames[shard]} record {sample_id - int(ix.starts[shard])} "
                f"(sample {sample_id})")

    def verify_hashes(self) -> None:
        """Check every shard file against the content hash index.json records for it (xxh64 when listed, else
        the first algorithm we compute); a DataError names the first that differs. A dataset without hashes is a
        DataError too, since verification was asked for."""
        ix = self.index
        for shard, hashes in enumerate(ix.hashes):
            algo = next((a for a in ("xxh64", *sorted(hashes)) if a in hashes and _hasher(a) is not None), None)
            path = self._stored(shard)
            if algo is None:
                raise DataError(f"shard {path}: {ix.root / INDEX_FILE} records no content hash we can check "
                                f"(has: {sorted(hashes) or 'none'}); rewrite the dataset with "
                                f"tools/convert_dataset.py, which records {', '.join(WRITE_HASHES)}")
            digest = file_hash(path, algo)
            if digest != hashes[algo]:
                raise DataError(f"shard {path}: content hash {algo} {digest} differs from {hashes[algo]} in "
                                f"{ix.root / INDEX_FILE}: the shard is corrupted")

    def sample(self, sample_id: int, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Columns `names` of one sample as decoded (no shape check: this is how shapes are learnt)."""
        ix = self.index
        shard = int(np.searchsorted(ix.starts, sample_id, side="right") - 1)
        data, offsets = self.samples(shard)
        local = sample_id - int(ix.starts[shard])
        return self._decode(data[offsets[local]:offsets[local + 1]], list(names), sample_id)

    def column(self, name: str) -> np.ndarray:
        """One column of every sample in order, [num_samples, *shape] (e.g. all labels, for checks)."""
        c, ix = self.index.columns[name], self.index
        if ix.record_bytes is None:
            return self.gather(np.arange(ix.num_samples), [name])[name]
        parts = [np.ascontiguousarray(self.records(s)[:, c.offset:c.offset + c.nbytes]).view(c.dtype)
                 for s in range(len(ix.basenames))]
        return np.concatenate(parts).reshape(ix.num_samples, *c.shape)
