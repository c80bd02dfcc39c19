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
