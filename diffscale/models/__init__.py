"""Pure nn.Modules; importing the package registers them (MODELS)."""

from diffscale.models import (  # noqa: F401
    ddpm_unet,
    deediff,
    edm2_unet,
    flow_dit,
    gan_head,
    sd_vae,
    song_unet,
    toy_mlp,
    uvit,
)
