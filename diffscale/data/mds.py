"""Read MDS shards (mosaicml-streaming's format, written by tools/convert_dataset.py) without importing mosaic.

An MDS shard is `num_samples: uint32`, `offsets: uint32[num_samples + 1]`, the writer's JSON config, then the
samples back to back. When every column has a fixed size (a `ndarray:<dtype>:<shape>` image and an `int64`
label, as our converter writes them) every sample is a record of the same length, so a shard memory-maps as
a `[num_samples, record_bytes]` uint8 array and a batch is gathered with one fancy index per shard touched:
no per-example Python and no per-example decode.

Why not mosaic's StreamingDataset for reading: importing `streaming` costs 4-12 s per process (it pulls in
transformers), which every `tools/train.py` run and test would pay; and its sample order depends on the
batch size, while the curation hook changes the batch size mid-run. Remote datasets are still fetched with
mosaic's downloaders (imported only then).
"""

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffscale.errors import ConfigError

INDEX_FILE = "index.json"  # mosaic's index of the shards
META_FILE = "diffscale.json"  # ours, next to it: class names, resolution, source, label counts
CONVERT_HINT = "convert one with tools/convert_dataset.py --source tiny-imagenet --input <dir> --output <dir>"
_SCALAR_ENCODINGS = {"int": "int64", **{t: t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16",
                                                        "uint32", "uint64", "float16", "float32", "float64")}}


@dataclass(frozen=True)
class Column:
    """Where one column sits inside a fixed-size record."""

    offset: int  # bytes from the record start
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]  # () for scalars


def _parse_encoding(encoding: str) -> tuple[np.dtype, tuple[int, ...]] | None:
    """dtype and shape of a fixed-size MDS encoding, None for variable-size ones (str, jpeg, pil, ...)."""
    if encoding in _SCALAR_ENCODINGS:
        return np.dtype(_SCALAR_ENCODINGS[encoding]), ()
    parts = encoding.split(":")
    if parts[0] == "ndarray" and len(parts) == 3:
        return np.dtype(parts[1]), tuple(int(d) for d in parts[2].split(","))
    return None


def record_layout(shard: dict) -> tuple[dict[str, Column], int]:
    """Columns and record length (bytes) of one shard entry of index.json; ValueError if not fixed-size."""
    if shard.get("format") != "mds" or shard.get("compression"):
        raise ValueError(f"shard {shard.get('raw_data', {}).get('basename')}: format {shard.get('format')} "
                         f"compression {shard.get('compression')}; only uncompressed MDS is read")
    columns, offset = {}, 0
    for name, encoding, size in zip(shard["column_names"], shard["column_encodings"], shard["column_sizes"],
                                    strict=True):
        parsed = _parse_encoding(encoding)
        if parsed is None or size is None:
            raise ValueError(f"column '{name}' has the variable-size encoding '{encoding}'; the loader reads "
                             "fixed-shape columns (ndarray:<dtype>:<shape>, int64): " + CONVERT_HINT)
        dtype, shape = parsed
        if dtype.itemsize * math.prod(shape) != size:
            raise ValueError(f"column '{name}': encoding '{encoding}' does not match its size {size}")
        columns[name] = Column(offset, size, dtype, shape)
        offset += size
    return columns, offset


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


class MDSIndex:
    """One dataset directory: its shards, the record layout they share and our metadata (may be empty)."""

    def __init__(self, root: Path, index: dict, meta: dict):
        self.root, self.meta = root, meta
        shards = index["shards"]
        if not shards:
            raise ValueError(f"{root / INDEX_FILE} lists no shards")
        self.columns, self.record_bytes = record_layout(shards[0])
        for shard in shards[1:]:
            if record_layout(shard) != (self.columns, self.record_bytes):
                raise ValueError(f"{root / INDEX_FILE}: shards have different columns")
        self.basenames = [s["raw_data"]["basename"] for s in shards]
        self.shard_bytes = [int(s["raw_data"]["bytes"]) for s in shards]
        counts = np.array([s["samples"] for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # [num_shards + 1] first sample id of each
        self.num_samples = int(self.starts[-1])

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
                raise ConfigError(f"{key}.path: cannot fetch {INDEX_FILE} from '{path}' ({exc}); "
                                  + CONVERT_HINT) from exc
            try:
                fetch(remote, root, META_FILE, timeout_s)
            except Exception:  # metadata is optional: MDS datasets written by other tools lack it
                pass
        if not (root / INDEX_FILE).is_file():
            raise ConfigError(f"{key}.path: no MDS dataset at '{path}' ({INDEX_FILE} not found); " + CONVERT_HINT)
        index = json.loads((root / INDEX_FILE).read_text())
        meta_file = root / META_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        return cls(root, index, meta), remote


class ShardStore:
    """Random access to the records of an MDSIndex. Memory maps are opened lazily per process (a DataLoader
    worker opens its own) and at most `max_open` are kept, because each holds a file descriptor."""

    def __init__(self, index: MDSIndex, remote: str | None = None, timeout_s: float = 60.0, max_open: int = 256):
        self.index, self.remote, self.timeout_s, self.max_open = index, remote, timeout_s, max_open
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}  # memory maps do not travel to other processes

    def records(self, shard: int) -> np.ndarray:
        """uint8 [num_samples_in_shard, record_bytes], memory-mapped."""
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        ix = self.index
        path = ix.root / ix.basenames[shard]
        if not path.is_file() or path.stat().st_size != ix.shard_bytes[shard]:
            if self.remote is None:
                raise FileNotFoundError(f"{path}: shard missing or truncated (expected {ix.shard_bytes[shard]} "
                                        f"bytes as {ix.root / INDEX_FILE} says)")
            path = fetch(self.remote, ix.root, ix.basenames[shard], self.timeout_s)
        data = np.memmap(path, dtype=np.uint8, mode="r")
        count = int(ix.starts[shard + 1] - ix.starts[shard])
        offsets = np.frombuffer(data, dtype="<u4", count=count + 1, offset=4).astype(np.int64)
        if int(np.frombuffer(data, dtype="<u4", count=1)[0]) != count or np.any(np.diff(offsets) != ix.record_bytes):
            raise ValueError(f"{path}: header does not match {INDEX_FILE} ({count} records of {ix.record_bytes} B)")
        rows = data[offsets[0]:offsets[-1]].reshape(count, ix.record_bytes)
        self._open[shard] = rows
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return rows

    def gather(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Columns of the samples `ids` (int64 [n]), each [n, *shape] in its stored dtype."""
        ix = self.index
        shard_of = np.searchsorted(ix.starts, ids, side="right") - 1
        rows = np.empty((len(ids), ix.record_bytes), dtype=np.uint8)
        for shard in np.unique(shard_of):  # one fancy index per shard touched, not one per example
            where = np.flatnonzero(shard_of == shard)
            rows[where] = self.records(int(shard))[ids[where] - ix.starts[shard]]
        return {name: np.ascontiguousarray(rows[:, c.offset:c.offset + c.nbytes]).view(c.dtype)
                .reshape(len(ids), *c.shape) for name, c in ix.columns.items()}

    def column(self, name: str) -> np.ndarray:
        """One column of every sample in order, [num_samples, *shape] (e.g. all labels, for checks)."""
        c, ix = self.index.columns[name], self.index
        parts = [np.ascontiguousarray(self.records(s)[:, c.offset:c.offset + c.nbytes]).view(c.dtype)
                 for s in range(len(ix.basenames))]
        return np.concatenate(parts).reshape(ix.num_samples, *c.shape)
