"""EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, Algorithm 1), with optional guidance.

Guidance (classifier-free or autoguidance, Karras et al. 2024 eq. 1):
D(x) = D_guide(x) + w (D_main(x) - D_guide(x)); w = 1 is no guidance.
"""

import torch

from diffscale.registry import SAMPLERS
from diffscale.sampling.guidance import Denoiser, guided


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float, device: torch.device) -> torch.Tensor:
    """Noise levels [num_steps + 1], descending, ending in 0 (EDM eq. 5)."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + i / max(num_steps - 1, 1) * (lo - hi)) ** rho  # one step: sigma_max, then 0
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64, device=device)])


@SAMPLERS.register_module()
class EDMHeunSampler:
    def __init__(self, num_steps: int = 32, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 guidance: float = 1.0):
        self.num_steps, self.sigma_min, self.sigma_max, self.rho = num_steps, sigma_min, sigma_max, rho
        self.guidance = guidance

    @torch.no_grad()
    def __call__(self, net: Denoiser, noise: torch.Tensor, labels: torch.Tensor | None = None,
                 guide: Denoiser | None = None) -> torch.Tensor:
        """Samples [B, ...] from unit `noise` [B, ...]; `guide` is the CFG / autoguidance denoiser."""
        D = guided(net, guide, self.guidance)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return D(x, sigma.expand(x.shape[0]).to(torch.float32), labels).to(torch.float64)

        sigmas = edm_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho, noise.device)
        x = noise.to(torch.float64) * sigmas[0]
        for i, (s_cur, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
            d_cur = (x - denoise(x.float(), s_cur)) / s_cur
            x_next = x + (s_next - s_cur) * d_cur
            if i < self.num_steps - 1:  # Heun correction, except at the last step (sigma -> 0)
                d_next = (x_next - denoise(x_next.float(), s_next)) / s_next
                x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
            x = x_next
        return x.float()
