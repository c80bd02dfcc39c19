"""Guidance of a denoiser by another (Karras et al. 2024 eq. 1; classifier-free guidance is the special case
where the guide is the unconditional model): D_w(x) = D_guide(x) + w (D(x) - D_guide(x)); w = 1 is none."""

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def guided(net: Denoiser, guide: Denoiser | None, weight: float) -> Denoiser:
    if guide is None or weight == 1:
        return net

    def denoise(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        d_guide = guide(x, sigma, labels).to(torch.float64)
        return d_guide + weight * (net(x, sigma, labels).to(torch.float64) - d_guide)

    return denoise
