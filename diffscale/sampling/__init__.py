"""Samplers (SAMPLERS), guidance and sample generation; importing the package registers the samplers."""

from diffscale.sampling import ddpm, edm_heun, one_step  # noqa: F401
