"""Readers of DeepSpeed and DCP checkpoints that never run code from the files they read.

Our own files load with `torch.load(weights_only=True)` (engine/checkpoint.py `load_file`). Two libraries we use
read theirs with full pickle: DeepSpeed's checkpoint engine and `zero_to_fp32` call `torch.load(weights_only=False)`,
and torch.distributed.checkpoint (DCP) reads `.metadata` with `pickle.load` and its non-tensor items ("bytes":
optimizer hyperparameters) with `torch.load(weights_only=False)`. A planted pickle in any of those files would run
on resume, export, or when a checkpoint serves as a reference, guide or part `init`. Here:

- DeepSpeed: `safe_torch_load` is weights_only=True plus the DeepSpeed classes its ZeRO optimizer state holds (the
  static or dynamic (fp16) loss-scaler record, the ZeRO stage enum, a fragment address: plain attribute records
  rebuilt without running code). Engines
  get it as their checkpoint engine's `load` (`guard_engine`); the offline consolidation (`zero_to_fp32`, which
  calls torch.load itself) runs under `weights_only_torch_load`.
- DCP: `SafeFileSystemReader` unpickles `.metadata` admitting only DCP's own metadata records, torch.Size, dtypes
  and paths; `SafeLoadPlanner` / `SafeEmptyLoadPlanner` load the bytes items with weights_only=True.

A refused file is a CheckpointError naming it.
"""

import contextlib
import io
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from diffscale.engine.checkpoint import refusal
from diffscale.errors import CheckpointError

_REFUSED = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError)


def _deepspeed_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def refused(path: object, exc: BaseException) -> CheckpointError:
    """The one-line CheckpointError of a refused or unreadable file; DCP's CheckpointException is unwrapped to the
    rank's own exception, and a CheckpointError raised inside it is kept as it is."""
    exc = dcp_failure(exc)
    return exc if isinstance(exc, CheckpointError) else refusal(path, exc)


@contextlib.contextmanager
def refusing(path: object) -> Iterator[None]:
    """Any failure inside the block (DCP's CheckpointException is a BaseException gathering every rank's) becomes
    `refused(path, ...)`; KeyboardInterrupt and SystemExit pass through."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise refused(path, exc) from None


def dcp_failure(exc: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's CheckpointException (a BaseException whose text is every rank's
    traceback); any other exception as it is."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))[0]
        # A failed metadata read surfaces as an AssertionError quoting our refusal: keep the refusal's text.
        return inner
    return exc


def _weights_only(load, f, map_location: object) -> object:
    """`load` (torch.load) of `f` with weights_only=True and DeepSpeed's state records allowed."""
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return load(f, map_location=map_location, weights_only=True)
    except _REFUSED as exc:
        raise refused(f, exc) from None


def safe_torch_load(path: str | Path, map_location: object = None, **_ignored: object) -> object:
    """torch.load of a DeepSpeed file with weights_only=True and DeepSpeed's state records allowed."""
    return _weights_only(torch.load, path, map_location)


def guard_engine(engine: object) -> None:
    """Make a DeepSpeed engine read its checkpoints with `safe_torch_load` (its engine's `load(path, map_location)`
    is the one entry DeepSpeed's load_checkpoint reads every file through)."""
    engine.checkpoint_engine.load = safe_torch_load


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Within the block, every torch.load is `safe_torch_load` (for library code that calls torch.load with
    weights_only=False itself, e.g. DeepSpeed's zero_to_fp32). Offline tools only: it patches the torch module."""
    original = torch.load

    def load(f, map_location=None, *args, **kwargs):
        return _weights_only(original, f, map_location)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


# ---------------------------------------------------------------------------------------------------- DCP
def _dcp_globals() -> dict[tuple[str, str], object]:
    import pathlib

    from torch.distributed.checkpoint import filesystem, metadata

    allowed = {("torch.distributed.checkpoint.metadata", n): getattr(metadata, n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")}
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    for cls in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"):
        allowed[("pathlib", cls)] = getattr(pathlib, cls)
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's metadata records and the plain values inside them; refuses every other global."""

    def __init__(self, file, source: Path):
        super().__init__(file)
        self.source, self.allowed = source, _dcp_globals()

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                        torch.memory_format)):
            return getattr(torch, name)  # dtypes, layouts and memory formats are constants, not callables
        raise pickle.UnpicklingError(f"refusing the global {module}.{name}: DCP metadata holds only its own "
                                     "records, sizes, dtypes and paths")


def _filesystem_reader():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        """FileSystemReader whose `.metadata` goes through `_MetadataUnpickler`."""

        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")  # DCP's names: '.metadata', or '__<rank>.metadata' per rank
            path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
            try:
                with open(path, "rb") as f:
                    metadata = _MetadataUnpickler(f, path).load()
            except _REFUSED as exc:
                raise refused(path, exc) from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader


def _load_bytes_safely(planner_cls: type) -> type:
    """`planner_cls` (a DefaultLoadPlanner) whose bytes items load with weights_only=True; where they go is the
    base class's rule (DefaultLoadPlanner.load_bytes)."""
    from torch.distributed.checkpoint._traverse import set_element

    class Safe(planner_cls):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                loaded = torch.load(value, weights_only=True)
            except _REFUSED as exc:
                raise refused(f"DCP item {fqn}", exc) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], loaded)
            else:
                self.state_dict[fqn] = loaded

    Safe.__name__ = f"Safe{planner_cls.__name__}"
    return Safe


def dcp_reader(checkpoint_dir: str | Path):
    """A DCP storage reader for `checkpoint_dir` that runs no code from its files."""
    return _filesystem_reader()(str(checkpoint_dir))


def dcp_planner():
    """DefaultLoadPlanner whose bytes items load with weights_only=True."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    return _load_bytes_safely(DefaultLoadPlanner)()


def dcp_read_all(checkpoint_dir: str | Path) -> dict:
    """Every item of a DCP checkpoint as one nested state dict, offline (no process group), safely; the reading
    half of torch's `dcp_to_torch_save`."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    with refusing(checkpoint_dir):
        _load_state_dict(state, storage_reader=dcp_reader(checkpoint_dir),
                         planner=_load_bytes_safely(_EmptyStateDictLoadPlanner)(), no_dist=True)
    return state
