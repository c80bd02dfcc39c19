"""diffscale: scale-out training of image diffusion models."""

__version__ = "0.1.0"
