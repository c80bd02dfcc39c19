"""SDVAE: Stable Diffusion's KL autoencoder (stabilityai/sd-vae-ft-ema) through diffusers' AutoencoderKL.

Latent diffusion (Rombach et al. 2022; DiT, EDM2 on ImageNet latents) trains on z = scaling_factor * a sample of
the encoder's posterior N(mean, exp(logvar)) of an image in [-1, 1], and decodes generated z / scaling_factor.
The weights are read from a local directory only: a training or sampling run never downloads anything.

Used two ways: tools/encode_latents.py calls `encode_moments` once per image (parts='encoder'), and a run on
latents holds a frozen part with parts='decoder' that the sampling pipeline calls as `decoder(z)` -> images.
"""

from pathlib import Path

import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.registry import MODELS

DOWNLOAD_HINT = ("download it from https://huggingface.co/stabilityai/sd-vae-ft-ema, e.g. "
                 "`huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir {path}`")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PARTS = ("both", "encoder", "decoder")

# stabilityai/sd-vae-ft-ema's config.json (the VAE of SD 1.x, fine-tuned decoder): 83,653,863 parameters.
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, norm_num_groups=32,
    act_fn="silu", sample_size=256,
)


def check_vae_directory(path: str) -> Path:
    """The local SD-VAE directory, or a ConfigError naming `path` and where to get the files."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"SDVAE path '{path}': no such directory; " + DOWNLOAD_HINT.format(path=path))
    if not (root / "config.json").is_file():
        raise ConfigError(f"SDVAE path '{path}': no config.json; " + DOWNLOAD_HINT.format(path=path))
    if not any((root / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"SDVAE path '{path}': no {' or '.join(WEIGHT_FILES)}; " + DOWNLOAD_HINT.format(path=path))
    return root


@MODELS.register_module()
class SDVAE(nn.Module):
    """encode_moments(images [B, 3, H, W] in [-1, 1]) -> (mean, logvar) [B, 4, H/8, W/8] float32, unscaled;
    decode(z [B, 4, h, w], scaled) -> images [B, 3, 8h, 8w] in [-1, 1]; forward = decode."""

    def __init__(
        self,
        path: str | None = None,  # local directory holding sd-vae-ft-ema's config.json and weights
        random_init: bool = False,  # the same architecture untrained (tests, benchmarks); `path` is then ignored
        scaling_factor: float = 0.18215,  # z = scaling_factor * posterior sample: about unit variance on ImageNet
        parts: str = "both",  # 'decoder' drops the encoder (a frozen decoder part needs no more), 'encoder' the decoder
        seed: int = 0,  # random_init's weights, so that every rank of a run builds the same ones
    ):
        super().__init__()
        if parts not in PARTS:
            raise ConfigError(f"SDVAE parts: '{parts}', expected one of {', '.join(PARTS)}")
        if not random_init and path is None:
            raise ConfigError("SDVAE path: not set; give the local sd-vae-ft-ema directory (or random_init=True); "
                              + DOWNLOAD_HINT.format(path="<path>"))
        root = None if random_init else check_vae_directory(path)
        # Imported here: diffusers takes seconds to import, which every run that builds no VAE would pay.
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        if random_init:
            with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's stream
                torch.manual_seed(seed)
                vae = AutoencoderKL(**SD_VAE_CONFIG)
        else:
            vae = AutoencoderKL.from_pretrained(str(root), local_files_only=True)
        if parts == "decoder":
            vae.encoder, vae.quant_conv = None, None
        elif parts == "encoder":
            vae.decoder, vae.post_quant_conv = None, None
        self.vae, self.parts, self.scaling_factor = vae, parts, float(scaling_factor)

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mean, logvar), each float32 [B, 4, H/8, W/8], unscaled; logvar clamped to
        [-30, 20] as diffusers' DiagonalGaussianDistribution does."""
        if self.vae.encoder is None:
            raise RuntimeError("SDVAE built with parts='decoder' has no encoder")
        posterior = self.vae.encode(images).latent_dist
        return posterior.mean.float(), posterior.logvar.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (clamped) of scaled latents z (the diffusion model's space)."""
        if self.vae.decoder is None:
            raise RuntimeError("SDVAE built with parts='encoder' has no decoder")
        return self.vae.decode(latents / self.scaling_factor).sample.clamp(-1, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)
