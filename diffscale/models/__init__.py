"""Pure nn.Modules; importing the package registers them (MODELS)."""

from diffscale.models import ddpm_unet, deediff, edm2_unet, flow_dit, sd_vae, song_unet, toy_mlp, uvit  # noqa: F401
