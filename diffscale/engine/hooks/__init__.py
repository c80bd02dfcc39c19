"""Hooks (HOOKS); importing the package registers them."""

from diffscale.engine.hooks import checkpoint, curation, ema, eval, logger, sample, toy_plot, validation  # noqa: F401
