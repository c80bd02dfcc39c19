"""Pure nn.Modules; importing the package registers them (MODELS)."""

from diffscale.models import ddpm_unet, edm2_unet, toy_mlp  # noqa: F401
