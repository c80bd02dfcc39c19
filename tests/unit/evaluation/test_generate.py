"""Distributed generation: the same samples and labels for any world size, and the [-1, 1] -> uint8 mapping."""

import pytest
import torch

from diffscale.errors import ConfigError
from diffscale.sampling.generate import generate, sample_shape, to_uint8


def fake_sampler(net, noise, labels, guide=None):
    """Deterministic per sample: the noise squashed into [-1, 1], shifted by the label."""
    return torch.tanh(noise + labels.reshape(-1, *[1] * (noise.ndim - 1)).float())


def all_samples(world: int, batch: int) -> dict[int, tuple[torch.Tensor, int]]:
    out = {}
    for rank in range(world):
        for b in generate(None, fake_sampler, 10, batch, (3, 4, 4), num_classes=3, seed=100, rank=rank,
                          world_size=world):
            assert b.samples.dtype == torch.uint8 and b.samples.shape[1:] == (3, 4, 4)
            out.update({int(s): (x, int(y)) for s, x, y in zip(b.seeds, b.samples, b.labels, strict=True)})
    return out


def test_any_world_size_and_batch_gives_the_same_samples():
    one = all_samples(1, 10)
    assert sorted(one) == list(range(100, 110))
    assert [one[s][1] for s in sorted(one)] == [i % 3 for i in range(10)]  # balanced classes
    for world, batch in ((2, 3), (3, 1), (4, 10)):
        other = all_samples(world, batch)
        assert one.keys() == other.keys()
        assert all(torch.equal(one[s][0], other[s][0]) and one[s][1] == other[s][1] for s in one)


def test_rank_r_takes_every_world_size_th_seed():
    seeds = [int(s) for b in generate(None, fake_sampler, 10, 2, (2,), num_classes=2, seed=0, rank=1, world_size=3,
                                      images=False) for s in b.seeds]
    assert seeds == [1, 4, 7]


def test_to_uint8():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 128, 191, 255, 255]


def test_sample_shape_from_the_model_or_the_config():
    class Image(torch.nn.Module):
        img_channels, img_resolution = 4, 32

    assert sample_shape(Image(), None) == (4, 32, 32)
    assert sample_shape(torch.nn.Linear(2, 2), [2]) == (2,)
    with pytest.raises(ConfigError, match="test_cfg.shape"):
        sample_shape(torch.nn.Linear(2, 2), None)


def test_decoder_maps_the_sampler_output():
    """test_cfg.decoder: a frozen part (here a fixed linear "VAE decoder" from 4 latent to 3 image channels) applied to
    what the sampler returns, before uint8 conversion."""
    weight = torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.3

    def decoder(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(z, weight)

    raw = [b.samples for b in generate(None, fake_sampler, 6, 4, (4, 2, 2), num_classes=2, images=False)]
    decoded = [b.samples for b in generate(None, fake_sampler, 6, 4, (4, 2, 2), num_classes=2, images=False,
                                           decoder=decoder)]
    images = [b.samples for b in generate(None, fake_sampler, 6, 4, (4, 2, 2), num_classes=2, decoder=decoder)]
    for r, d, i in zip(raw, decoded, images, strict=True):
        assert d.shape[1] == 3 and torch.allclose(d, decoder(r))
        assert torch.equal(i, to_uint8(decoder(r)))


def test_sampling_parts_name_the_part_and_decoder():
    from mmengine.config import Config

    from diffscale.evaluation.pipeline import TEST_DEFAULTS, part_model_cfg, sampling_parts

    toy = dict(type="ToyMLP")
    cfg = Config(dict(parts=dict(generator=dict(model=toy), vae=dict(model=dict(type="ToyMLP", hidden_dim=8)))))
    settings = dict(TEST_DEFAULTS, part="generator", decoder="vae")
    assert sampling_parts(cfg, settings) == ("generator", "vae")
    assert part_model_cfg(cfg, "vae")["hidden_dim"] == 8
    with pytest.raises(ConfigError, match="test_cfg.part: this config has the parts generator, vae; name the one"):
        sampling_parts(cfg, dict(settings, part=None))
    with pytest.raises(ConfigError, match="test_cfg.decoder: 'vea' is not a part of this config"):
        sampling_parts(cfg, dict(settings, decoder="vea"))
    one = Config(dict(model=toy))
    assert sampling_parts(one, dict(TEST_DEFAULTS)) == ("model", None)
