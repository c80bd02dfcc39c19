"""Samplers (SAMPLERS), guidance and sample generation; importing the package registers the samplers."""

from diffscale.sampling import consistency, ddpm, early_exit, edm_heun, flow, one_step  # noqa: F401
