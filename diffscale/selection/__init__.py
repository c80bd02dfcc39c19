"""Selectors (SELECTORS): pure functions on loss tensors; importing the package registers them."""

from diffscale.selection import jest, simple  # noqa: F401
