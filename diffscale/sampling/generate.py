"""Distributed sample generation, shared by tools/test.py, tools/generate.py and the EvalHook.

Sample i (0 <= i < num) starts from unit noise drawn by its own generator seeded `seed + i`, is conditioned on
class i % num_classes (balanced classes), and is made by rank i % world_size: rank r takes samples r, r + W, ...
So every world size produces the same samples, and per-sample seeds make any one of them reproducible alone.
"""

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from diffscale.errors import ConfigError
from diffscale.sampling.guidance import Denoiser


class Batch(NamedTuple):
    samples: torch.Tensor  # uint8 [B, 3, H, W] when images=True, else the sampler's float output [B, ...]
    labels: torch.Tensor | None  # int64 [B], or None for an unconditional model
    seeds: torch.Tensor  # int64 [B]: the seed of each sample (seed + its index)


def seeded_noise(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Unit Gaussian noise [len(seeds), *shape] on the CPU, one generator per seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [0, 255], rounded to nearest."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def unconditional(net: Denoiser) -> Denoiser:
    """Classifier-free guidance's guide: the same network without class labels."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return net(x, sigma, None)

    return denoise


def sample_shape(model: torch.nn.Module, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The shape of one sample: `shape` if given, else (img_channels, img_resolution, img_resolution) of the
    model (or of its `net`), as image models declare them."""
    if shape is not None:
        return tuple(int(s) for s in shape)
    for m in (model, getattr(model, "net", None)):
        if m is not None and hasattr(m, "img_channels") and hasattr(m, "img_resolution"):
            return (int(m.img_channels), int(m.img_resolution), int(m.img_resolution))
    raise ConfigError(f"test_cfg.shape: {type(model).__name__} does not declare img_channels / img_resolution; "
                      f"give the shape of one sample, e.g. shape=(2,) for the toy")


@torch.no_grad()
def generate(net: Denoiser, sampler, num: int, batch_gpu: int, shape: tuple[int, ...], *,
             guide: Denoiser | None = None, num_classes: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
             device: torch.device | str = "cpu", images: bool = True, seeds: torch.Tensor | None = None,
             classes: torch.Tensor | None = None, decoder: Callable | None = None) -> Iterator[Batch]:
    """This rank's share of `num` samples, in batches of at most `batch_gpu`. `sampler(net, noise, labels,
    guide=guide)` is called once per batch (its `guidance` weight applies to `guide`). Explicit `seeds` [num] and
    `classes` [num] replace seed + i and i % num_classes for sample i. `decoder` (a frozen part, e.g. a VAE decoder)
    maps the sampler's output to what is returned (images for latent models)."""
    indices = torch.arange(rank, num, world_size)
    for chunk in indices.split(batch_gpu):
        chunk_seeds = seeds[chunk] if seeds is not None else seed + chunk
        noise = seeded_noise(chunk_seeds, shape).to(device)
        if classes is not None:
            labels = classes[chunk].to(device)
        else:
            labels = (chunk % num_classes).to(device) if num_classes > 0 else None
        # Stochastic samplers (DDPM, DDIM with eta > 0) seed each sample's step noise from its seed too.
        extra = {"seeds": chunk_seeds} if getattr(sampler, "takes_seeds", False) else {}
        x = sampler(net, noise, labels, guide=guide, **extra)
        if decoder is not None:
            x = decoder(x)
        yield Batch(to_uint8(x) if images else x, labels, chunk_seeds)
