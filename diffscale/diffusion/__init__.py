"""Objectives (the protocol in base.py) and preconditioned networks; importing registers them."""

from diffscale.diffusion import consistency, ddpm, ddpm_net, deediff, dmd2, edm, flow  # noqa: F401
