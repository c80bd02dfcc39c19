"""Errors that users see as one line (tools exit with code 2, no traceback)."""

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong kind. The message names the key."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Comma-separated list of the registered names closest to `name`, for error messages."""
    candidates = sorted(set(candidates))
    hits = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    return ", ".join(hits) if hits else ", ".join(candidates[:8])


class CheckpointError(FileNotFoundError):
    """A checkpoint (or export) is missing, incomplete, corrupted or refused (it would run code). The message names
    the file. A FileNotFoundError, so tools that report missing files report it the same way."""


class DataError(ValueError):
    """A dataset file is missing, truncated or corrupted, or holds a value the run cannot use. The message names the
    shard and, where one is at fault, the record."""
