"""Exponential moving averages of the parameters: classic (fixed decay) and EDM2's power function.

Power-function EMA (Karras et al. 2024, "Analyzing and improving...", Sec. 3.1): at step t the average
weights past steps with a power law, beta_t = (1 - 1/t)^(gamma + 1). Its width is quoted as the relative
standard deviation sigma_rel of that profile; gamma solves
(gamma + 1) / ((gamma + 2)^2 (gamma + 3)) = sigma_rel^2 (EDM2 eq. 3).

The averages are plain fp32 tensors shaped like the strategy's local parameter tensors, so under FSDP2 and
ZeRO-3 each rank averages only its own shard, and the update is one fused foreach call per average.
"""

import numpy as np
import torch


def std_to_gamma(sigma_rel: float) -> float:
    """The power-function exponent gamma of relative width sigma_rel (the real root of the cubic)."""
    inv = sigma_rel**-2
    # (gamma + 2)^2 (gamma + 3) - inv (gamma + 1) = gamma^3 + 7 gamma^2 + (16 - inv) gamma + (12 - inv)
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(roots[np.isreal(roots)].real.max())


def power_beta(gamma: float, step: int) -> float:
    """Decay at optimizer step `step` (1-based): the first update copies the weights."""
    return (1.0 - 1.0 / step) ** (gamma + 1) if step > 1 else 0.0


class ParamEMA:
    """Averages of `params` ({name: local tensor}): one per entry of `betas_fn`'s output."""

    def __init__(self, params: dict[str, torch.Tensor], keys: list[str]):
        self.names = list(params)
        self.averages = {k: {n: p.detach().float().clone() for n, p in params.items()} for k in keys}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor], betas: dict[str, float]) -> None:
        current = [params[n].detach().float() for n in self.names]
        for key, beta in betas.items():
            avg = [self.averages[key][n] for n in self.names]
            torch._foreach_lerp_(avg, current, 1.0 - beta)  # avg = beta avg + (1 - beta) p
