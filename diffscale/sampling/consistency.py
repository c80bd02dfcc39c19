"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Alg. 1) of a consistency model
f(x, sigma, labels) (diffusion/consistency.py: ConsistencyPrecond).

One step:  x = f(sigma_0 z, sigma_0), sigma_0 = sigma_max.
Multistep: for each next level sigma_k (descending), x <- f(x + sqrt(sigma_k^2 - sigma_min^2) z_k, sigma_k).

Two-step CD on CIFAR-10: openai/consistency_models_cifar10, editing_multistep_sampling.ipynb, samples its CD
checkpoint (configs/cifar10_ve_cd.py, checkpoint 80) with ts = [0, 11, 17] on the N = 18 training grid, i.e.
sigmas = (80.0, 0.5853481231945422): sigma = (80^(1/7) + 11/17 (0.002^(1/7) - 80^(1/7)))^7. Both reference samplers
clamp every f output to [-1, 1] (that notebook; cm/karras_diffusion.py, clip_denoised): `clip_denoised=True`.

The step noise z_k of sample i comes from its own generator seeded from its sample seed (as the DDPM and stochastic
flow samplers), so a sample does not depend on the batch it is drawn in.
"""

import math

import torch

from diffscale.errors import ConfigError
from diffscale.registry import SAMPLERS
from diffscale.sampling.ddpm import step_noise
from diffscale.sampling.guidance import Denoiser

CIFAR10_CD_TWO_STEP = (80.0, 0.5853481231945422)  # the notebook's ts = [0, 11, 17] on the N = 18 grid (above)


@SAMPLERS.register_module()
class ConsistencySampler:
    """`sigmas`: the descending noise levels f is evaluated at, the first the model's sigma_max; every later one
    must exceed `sigma_min` (the model's). `guidance` is always 1 (callers read it): no guide. With more than one
    level the sampler is stochastic and takes each sample's seed (`takes_seeds`)."""

    def __init__(self, sigmas: tuple[float, ...] | list[float] = (80.0,), sigma_min: float = 0.002,
                 clip_denoised: bool = False):
        if not isinstance(sigmas, (tuple, list)) or not sigmas:
            raise ConfigError(f"sampler.sigmas: expected a non-empty list of noise levels, got {sigmas!r}")
        sigmas = tuple(float(s) for s in sigmas)
        if not sigma_min > 0:
            raise ConfigError(f"sampler.sigma_min: expected > 0, got {sigma_min!r}")
        if any(not s > sigma_min for s in sigmas) or any(a <= b for a, b in zip(sigmas[:-1], sigmas[1:], strict=True)):
            raise ConfigError(f"sampler.sigmas: expected strictly descending levels above sigma_min ({sigma_min}), "
                              f"got {list(sigmas)}")
        self.sigmas, self.sigma_min, self.clip_denoised = sigmas, float(sigma_min), bool(clip_denoised)
        self.guidance = 1.0
        self.takes_seeds = len(sigmas) > 1  # generate() then passes each sample's seed (for the step noise)

    def _f(self, net: Denoiser, x: torch.Tensor, sigma: float, labels: torch.Tensor | None) -> torch.Tensor:
        out = net(x, torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device), labels).float()
        return out.clamp(-1, 1) if self.clip_denoised else out

    @torch.no_grad()
    def __call__(self, net: Denoiser, noise: torch.Tensor, labels: torch.Tensor | None = None,
                 guide: Denoiser | None = None, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Samples [B, ...] float32 from unit `noise` [B, ...], class `labels` [B] (or None) and, for more than one
        level, each sample's seed [B] (default 0..B-1) for its step noise."""
        if guide is not None:
            raise ValueError("ConsistencySampler: a consistency model takes no guide (guide must be None)")
        x = self._f(net, noise.float() * self.sigmas[0], self.sigmas[0], labels)
        if len(self.sigmas) == 1:
            return x
        seeds = torch.arange(noise.shape[0]) if seeds is None else seeds
        z = step_noise(seeds, tuple(noise.shape[1:]), len(self.sigmas) - 1, noise.device)
        for sigma in self.sigmas[1:]:
            x = self._f(net, x + math.sqrt(sigma**2 - self.sigma_min**2) * z.next().float(), sigma, labels)
        return x
