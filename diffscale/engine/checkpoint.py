"""Atomic checkpoint directories (docs/architecture.md, "Checkpoints").

A save writes everything into `checkpoints/iter_XXXXXXX.tmp/`, then rank 0 writes a manifest (every
file's size and CRC32), renames the directory to its final name and only then points
`work_dir/last_checkpoint` at it. A kill at any moment leaves the previous checkpoint untouched; a
checkpoint whose files no longer match its manifest is skipped on resume with a warning.
"""

import json
import logging
import os
import re
import shutil
import zlib
from pathlib import Path

import torch

MANIFEST = "manifest.json"
LAST = "last_checkpoint"
_NAME = re.compile(r"^iter_(\d+)$")
log = logging.getLogger("diffscale")


def save_file(obj: object, path: Path) -> None:
    torch.save(obj, path)


def load_file(path: Path, device: torch.device | str = "cpu") -> dict:
    """torch.load with weights_only=True: checkpoints hold tensors and plain Python values only."""
    return torch.load(path, map_location=device, weights_only=True)


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
    pointer = Path(work_dir).resolve() / LAST
    pointer_tmp = pointer.with_suffix(".tmp")
    pointer_tmp.write_text(str(final) + "\n")
    os.replace(pointer_tmp, pointer)
    _prune(final.parent, keep)


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
    """None if every file matches the manifest, else the reason it does not."""
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        return f"{manifest_path} is missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    for rel, meta in manifest.items():
        path = ckpt / rel
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {meta['bytes']}"
        if _crc32(path) != meta["crc32"]:
            return f"{path} fails its CRC32 check"
    return None


def resolve_resume(work_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from. resume='auto': the newest complete one in work_dir (None if there
    is none); else the path given, which must be complete."""
    if resume != "auto":
        ckpt = Path(resume).resolve()
        reason = verify(ckpt)
        if reason:
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint: {reason}")
        return ckpt
    root = Path(work_dir).resolve() / "checkpoints"
    candidates = list_checkpoints(root)
    pointer = Path(work_dir).resolve() / LAST
    if pointer.is_file():
        named = Path(pointer.read_text().strip())
        candidates = [named] + [c for c in candidates if c != named]
    for ckpt in candidates:
        reason = verify(ckpt)
        if reason is None:
            return ckpt
        log.warning("checkpoint %s is incomplete or corrupted (%s); trying the previous one", ckpt, reason)
    return None
