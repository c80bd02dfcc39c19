"""Guidance of a denoiser by another (Karras et al. 2024 eq. 1; classifier-free guidance is the special case
where the guide is the unconditional model): D_w(x) = D_guide(x) + w (D(x) - D_guide(x)); w = 1 is none.
The same mixing applies to a DDPM network's eps / x0 / v prediction (sampling/ddpm.py)."""

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def guided(net: Denoiser, guide: Denoiser | None, weight: float, channels: int | None = None) -> Denoiser:
    """`channels`: mix only the first `channels` output channels (a DDPM network's prediction) and keep the rest
    (its learned variance) from `net`; None mixes the whole output."""
    if guide is None or weight == 1:
        return net

    def denoise(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        out = net(x, sigma, labels).to(torch.float64)
        d_guide = guide(x, sigma, labels).to(torch.float64)
        if channels is None or out.shape[1] == channels:
            return d_guide + weight * (out - d_guide)
        mixed = d_guide[:, :channels] + weight * (out[:, :channels] - d_guide[:, :channels])
        return torch.cat([mixed, out[:, channels:]], dim=1)

    return denoise
