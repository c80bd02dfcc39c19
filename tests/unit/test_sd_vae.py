"""SDVAE: the sd-vae-ft-ema architecture, encode/decode shapes and scaling, local loading, parts, errors."""

import pytest
import torch

from diffscale import registry as R
from diffscale.errors import ConfigError
from diffscale.models.sd_vae import SDVAE

# stabilityai/sd-vae-ft-ema's config.json as published (written out here, not taken from the module under test).
PUBLISHED_CONFIG = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
PUBLISHED_PARAMS = 83_653_863  # sd-vae-ft-ema's diffusion_pytorch_model.safetensors


# The VAE's convolutions run faster on one intra-op thread than on two fighting over a busy 2-core machine, and
# encodings compared bitwise must come from one thread count.
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def vae():
    return SDVAE(random_init=True, seed=0).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_random_init_is_the_sd_vae_architecture(vae):
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    config = vae.vae.config
    assert tuple(config.block_out_channels) == (128, 256, 512, 512) and config.latent_channels == 4
    assert config.norm_num_groups == 32 and config.layers_per_block == 2 and config.act_fn == "silu"
    assert tuple(config.down_block_types) == ("DownEncoderBlock2D",) * 4
    assert tuple(config.up_block_types) == ("UpDecoderBlock2D",) * 4
    assert all(len(block.resnets) == 2 for block in vae.vae.encoder.down_blocks)
    assert vae.vae.encoder.conv_norm_out.num_groups == 32 and vae.scaling_factor == 0.18215
    ours = sum(p.numel() for p in vae.parameters())
    with torch.device("meta"):  # counted without initialising 84M weights
        theirs = AutoencoderKL.from_config(PUBLISHED_CONFIG).num_parameters()
    print(f"SDVAE parameters: {ours:,} (diffusers' count of the published config: {theirs:,})")
    assert ours == theirs == PUBLISHED_PARAMS


def test_encode_decode_shapes_and_scaling(vae, images):
    with torch.no_grad():
        mean, logvar = vae.encode_moments(images)
        posterior = vae.vae.encode(images).latent_dist
        assert mean.shape == logvar.shape == (2, 4, 2, 2) and mean.dtype == logvar.dtype == torch.float32
        assert torch.equal(mean, posterior.mean) and torch.equal(logvar, posterior.logvar)
        z = mean * vae.scaling_factor
        out = vae(z)
        assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
        direct = vae.vae.decode(z / 0.18215).sample.clamp(-1, 1)
        assert torch.equal(out, direct) and torch.equal(vae.decode(z), out)
        assert not torch.allclose(out, vae.vae.decode(z).sample.clamp(-1, 1))  # the division matters


def test_missing_weights_are_config_errors_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"SDVAE path '.*nowhere': no such directory.*huggingface\.co/stabilityai/"
                                          r"sd-vae-ft-ema.*--local-dir .*nowhere"):
        SDVAE(str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"'.*half': no diffusion_pytorch_model\.safetensors or .*\.bin"):
        SDVAE(str(tmp_path / "half"))
    with pytest.raises(ConfigError, match="SDVAE path: not set"):
        SDVAE()
    with pytest.raises(ConfigError, match="parts: 'middle'"):
        SDVAE(random_init=True, parts="middle")


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_a_saved_directory_loads_locally_with_identical_outputs(vae, images, tmp_path, safe):
    vae.vae.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / "config.json").is_file()
    loaded = SDVAE(str(tmp_path), parts="both" if safe else "decoder").eval()  # local_files_only: no download
    with torch.no_grad():
        z = vae.encode_moments(images)[0] * vae.scaling_factor
        assert torch.equal(loaded(z), vae(z))
        if safe:
            assert all(torch.equal(a, b) for a, b in zip(loaded.encode_moments(images), vae.encode_moments(images),
                                                            strict=True))


def test_decoder_part_has_no_encoder(vae, images):
    """Built from a config as a frozen part is; the same seed gives the full VAE's decoder weights."""
    decoder = R.build(R.MODELS, dict(type="SDVAE", random_init=True, parts="decoder"), "model").eval()
    names = [n for n, _ in decoder.named_parameters()]
    assert names and not any(n.startswith(("vae.encoder.", "vae.quant_conv.")) for n in names)
    assert sum(p.numel() for p in decoder.parameters()) < sum(p.numel() for p in vae.parameters())
    z = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(decoder(z), vae(z))
    with pytest.raises(RuntimeError, match="no encoder"):
        decoder.encode_moments(images)
