"""Objectives (the protocol in base.py) and preconditioned networks; importing registers them."""

from diffscale.diffusion import dmd2, edm  # noqa: F401
