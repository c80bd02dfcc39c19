"""Atomic checkpoint directories (docs/architecture.md, "Checkpoints").

A save writes everything into `checkpoints/iter_XXXXXXX.tmp/`, then rank 0 writes a manifest (every
file's size and CRC32), renames the directory to its final name and only then points
`work_dir/last_checkpoint` at it. A kill at any moment leaves the previous checkpoint untouched; a
checkpoint whose files no longer match its manifest is skipped on resume with a warning.

Checkpoints are files users receive from others, so reading one must never run code: `verify` is strict (the
manifest lists exactly the files present), every torch file loads with weights_only=True (`load_file`; DeepSpeed's
and DCP's readers are routed through the same rule in engine/safe_load.py), and the pointer `last_checkpoint`
holds a path relative to its own directory that may not leave it (a copied work_dir never resumes from the
original's checkpoints).
"""

import json
import logging
import os
import pickle
import re
import shutil
import zlib
from pathlib import Path

import torch

from diffscale.errors import CheckpointError

MANIFEST = "manifest.json"
LAST = "last_checkpoint"
_NAME = re.compile(r"^iter_(\d+)$")
log = logging.getLogger("diffscale")


def save_file(obj: object, path: Path) -> None:
    torch.save(obj, path)


def load_file(path: Path, device: torch.device | str = "cpu") -> dict:
    """torch.load with weights_only=True: checkpoints hold tensors and plain Python values only. A file that
    needs anything else (a planted pickle) or is not a torch file is a CheckpointError naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise refusal(path, exc) from None


def refusal(path: object, exc: BaseException) -> CheckpointError:
    """The one-line CheckpointError of a file (or item) a reader refused or could not read."""
    detail = " ".join(str(exc).split())[:300]
    return CheckpointError(f"{path}: refused or unreadable ({type(exc).__name__}: {detail})")


def checkpoint_dir(work_dir: str | Path, step: int) -> Path:
    return Path(work_dir).resolve() / "checkpoints" / f"iter_{step:07d}"


def temp_dir(final: Path) -> Path:
    return final.with_name(final.name + ".tmp")


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def finalize(tmp: Path, final: Path, work_dir: str | Path, keep: int) -> None:
    """Rank 0, after every rank has written into `tmp`: manifest, fsync, rename, point, prune."""
    manifest = {}
    for path in _files(tmp):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        manifest[str(path.relative_to(tmp))] = {"bytes": path.stat().st_size, "crc32": _crc32(path)}
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # a re-save of the same step after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    write_pointer(Path(work_dir), final)
    _prune(final.parent, keep)


def write_pointer(directory: Path, target: Path) -> None:
    """Point `directory`/last_checkpoint at checkpoint `target` (inside `directory`), atomically, by a path
    relative to `directory`: a copied or moved work_dir keeps pointing at its own checkpoints."""
    directory = directory.resolve()
    rel = target.resolve().relative_to(directory)
    tmp = directory / (LAST + ".tmp")
    tmp.write_text(rel.as_posix() + "\n")
    os.replace(tmp, directory / LAST)


def read_pointer(directory: Path) -> Path | None:
    """The checkpoint `directory`/last_checkpoint names, or None (with a warning) when the pointer is missing,
    unreadable, or names anything but an iter_XXXXXXX directory inside `directory`. An absolute pointer (written
    before pointers were relative) is accepted when it lies inside `directory`."""
    pointer = Path(directory) / LAST
    if not pointer.is_file():
        return None
    root = Path(directory).resolve()
    try:
        text = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("%s is unreadable (%s); scanning for checkpoints instead", pointer, exc)
        return None
    if not text or "\n" in text or "\x00" in text:
        log.warning("%s does not hold one path; scanning for checkpoints instead", pointer)
        return None
    target = (root / text).resolve()  # an absolute `text` replaces root
    if not target.is_relative_to(root) or not _NAME.match(target.name):
        log.warning("%s points at %s, which is not a checkpoint inside %s; ignoring it", pointer, text, root)
        return None
    return target


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Final (renamed) checkpoint directories under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def verify(ckpt: Path) -> str | None:
    """None if the manifest lists exactly the checkpoint's files and every one matches its size and CRC32, else
    the reason it does not. Strict: a manifest that is not a JSON object of {"bytes": int, "crc32": int} entries,
    an empty one, a path that leaves the directory, a file it does not list, all fail."""
    ckpt = Path(ckpt)
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        return f"{manifest_path} is missing"
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    if not isinstance(manifest, dict) or not manifest:
        return f"{manifest_path} is not a non-empty JSON object of files"
    root = ckpt.resolve()
    on_disk = {p.relative_to(ckpt).as_posix() for p in _files(ckpt)}
    unlisted = sorted(on_disk - set(manifest))
    if unlisted:
        return f"{ckpt / unlisted[0]} is not in the manifest ({len(unlisted)} unlisted files)"
    for rel, meta in manifest.items():
        path = ckpt / rel
        if not (isinstance(meta, dict) and type(meta.get("bytes")) is int and type(meta.get("crc32")) is int):
            return f"{manifest_path}: the entry of '{rel}' is not {{\"bytes\": int, \"crc32\": int}}"
        if not path.resolve().is_relative_to(root) or rel == MANIFEST:
            return f"{manifest_path}: the entry '{rel}' does not name a file of the checkpoint"
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {meta['bytes']}"
        if _crc32(path) != meta["crc32"]:
            return f"{path} fails its CRC32 check"
    return None


def require_complete(ckpt: Path, what: str = "checkpoint") -> Path:
    """`ckpt` if it verifies, else a CheckpointError naming it and the reason (export, references, inits)."""
    reason = verify(ckpt)
    if reason:
        raise CheckpointError(f"{what} {ckpt}: not a complete checkpoint: {reason}")
    return Path(ckpt)


def resolve_resume(work_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from. resume='auto': the newest complete one in work_dir (None if there
    is none); else the path given, which must be complete."""
    if resume != "auto":
        ckpt = Path(resume).resolve()
        reason = verify(ckpt)
        if reason:
            raise CheckpointError(f"--resume {resume}: not a complete checkpoint: {reason}")
        return ckpt
    return newest_complete(Path(work_dir), warn=True)


def newest_first(work_dir: Path) -> list[Path]:
    """The checkpoints of a work_dir (or of its best/) to try, best first: the one its pointer names, then the
    others newest first."""
    root = Path(work_dir).resolve()
    candidates = list_checkpoints(root / "checkpoints") + list_checkpoints(root)  # work_dir; or best/
    named = read_pointer(root)
    if named is not None:
        candidates = [named] + [c for c in candidates if c != named]
    return candidates


def newest_complete(work_dir: Path, warn: bool = False) -> Path | None:
    """The first checkpoint of `newest_first` that verifies, or None; `warn`: say why each one before it failed."""
    for candidate in newest_first(work_dir):
        reason = verify(candidate)
        if reason is None:
            return candidate
        if warn:
            log.warning("checkpoint %s is incomplete or corrupted (%s); trying the previous one", candidate, reason)
    return None
