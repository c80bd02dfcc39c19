"""One-step sampling of a distilled generator (DMD2, Yin et al. 2024): x = G(sigma_max z; sigma_max)."""

import torch

from diffscale.errors import ConfigError
from diffscale.registry import SAMPLERS
from diffscale.sampling.guidance import Denoiser


@SAMPLERS.register_module()
class OneStepSampler:
    """`sigma_max`: the generator's input noise level; it must equal the level the generator was trained at
    (DMD2Loss.sigma_gen). `guidance` is always 1 (callers read `sampler.guidance`): a one-step generator
    takes no guide."""

    def __init__(self, sigma_max: float = 80.0):
        if not sigma_max > 0:
            raise ConfigError(f"sampler.sigma_max: expected > 0, got {sigma_max!r}")
        self.sigma_max = float(sigma_max)
        self.guidance = 1.0

    @torch.no_grad()
    def __call__(self, net: Denoiser, noise: torch.Tensor, labels: torch.Tensor | None = None,
                 guide: Denoiser | None = None) -> torch.Tensor:
        """Samples [B, ...] float32 from unit `noise` [B, ...] and optional class `labels` [B]."""
        if guide is not None:
            raise ValueError("OneStepSampler: a one-step generator takes no guide (guide must be None)")
        sigma = torch.full((noise.shape[0],), self.sigma_max, dtype=torch.float32, device=noise.device)
        return net(noise.float() * self.sigma_max, sigma, labels).float()
