"""Samplers of a rectified-flow velocity network net(x_t, t [B], labels) (diffusion/flow.py: x_t = (1 - t) x0 + t eps,
v = eps - x0), integrating dx/dt = v from t = 1 (noise) down to t = 0 on the grid t_i = 1 - i / N, optionally shifted
(t' = shift t / (1 + (shift - 1) t), as in training).

Euler           x <- x - v(x, t_i) h_i,  h_i = t_i - t_{i+1} (1 / N unshifted: the seed's linspace(1, 1/N, N)).
Heun            Euler's prediction, then the mean of the velocities at both ends (second order); guidance is
                applied at both evaluations.
Euler stochastic
                x <- x - v h + (sigma^2 / 2) score h + sigma sqrt(h) z, sigma(t) = t (1 - t) / (1 - t + 0.008) (the
                seed's noise scale, largest mid-way, zero at both ends). The score of x_t follows from v:
                eps_hat = x + (1 - t) v, score = -eps_hat / t. That drift term is the reverse-time SDE's correction
                that keeps every marginal the ODE's; the seed adds sigma sqrt(h) z without it (`correction=False`
                reproduces that), which inflates the variance of what it generates (tests/unit/test_flow_samplers).

Guidance (classifier-free): the seed's v = (1 + w) v_cond - w v_uncond is the shared guidance path's
v_uncond + g (v_cond - v_uncond) with g = 1 + w, so its w = 3..7 is our `guidance` = 4..8 (1 is none).
Step noise is drawn per sample from its own seed (as the DDPM samplers), so a sample does not depend on the batch.
"""

import math

import torch

from diffscale.errors import ConfigError
from diffscale.registry import SAMPLERS
from diffscale.sampling.ddpm import step_noise
from diffscale.sampling.guidance import Denoiser, guided

SIGMA_OFFSET = 0.008  # the seed's constant in sigma(t) = t (1 - t) / (1 - t + 0.008)


def flow_grid(num_steps: int, shift: float) -> list[float]:
    """t_0 = 1 > t_1 > ... > t_N = 0 (N + 1 Python floats: the loop reads no device value): uniform, then shifted."""
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)).tolist()


def stochastic_sigma(t: float) -> float:
    return t * (1 - t) / (1 - t + SIGMA_OFFSET)


class _FlowSampler:
    takes_seeds = False  # True: stochastic, generate() passes each sample's seed (for the step noise)

    def __init__(self, num_steps: int = 50, guidance: float = 1.0, shift: float = 1.0):
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ConfigError(f"sampler.num_steps: expected a positive integer, got {num_steps!r}")
        if not shift > 0:
            raise ConfigError(f"sampler.shift: expected a positive number, got {shift!r}")
        self.num_steps, self.guidance, self.shift = num_steps, float(guidance), float(shift)

    def velocity(self, net: Denoiser, guide: Denoiser | None, labels: torch.Tensor | None):
        V = guided(net, guide, self.guidance)

        def v(x: torch.Tensor, t: float) -> torch.Tensor:
            return V(x.float(), torch.full((x.shape[0],), t, device=x.device), labels).to(torch.float64)

        return v

    def _step(self, v, x: torch.Tensor, t: float, t_next: float, z) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, net: Denoiser, noise: torch.Tensor, labels: torch.Tensor | None = None,
                 guide: Denoiser | None = None, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Samples [B, ...] float32 from unit `noise` [B, ...] (x at t = 1) and class `labels` [B] (or None)."""
        v = self.velocity(net, guide, labels)
        grid = flow_grid(self.num_steps, self.shift)
        steps = None
        if self.takes_seeds:
            seeds = torch.arange(noise.shape[0]) if seeds is None else seeds
            steps = step_noise(seeds, tuple(noise.shape[1:]), self.num_steps, noise.device)
        x = noise.to(torch.float64)
        for i in range(self.num_steps):
            x = self._step(v, x, grid[i], grid[i + 1], steps)
        return x.float()


@SAMPLERS.register_module()
class FlowEulerSampler(_FlowSampler):
    def _step(self, v, x, t, t_next, z) -> torch.Tensor:
        return x - v(x, t) * (t - t_next)


@SAMPLERS.register_module()
class FlowHeunSampler(_FlowSampler):
    """Heun's method: 2 network evaluations per step (with guidance, 4)."""

    def _step(self, v, x, t, t_next, z) -> torch.Tensor:
        h = t - t_next
        v_cur = v(x, t)
        x_pred = x - v_cur * h
        return x - 0.5 * (v_cur + v(x_pred, t_next)) * h


@SAMPLERS.register_module()
class FlowEulerStochasticSampler(_FlowSampler):
    takes_seeds = True  # generate() passes each sample's seed (for the step noise)

    def __init__(self, num_steps: int = 50, guidance: float = 1.0, shift: float = 1.0, correction: bool = True):
        super().__init__(num_steps, guidance, shift)
        self.correction = bool(correction)

    def _step(self, v, x, t, t_next, z) -> torch.Tensor:
        h = t - t_next
        vel = v(x, t)
        sigma = stochastic_sigma(t)
        x_next = x - vel * h + sigma * math.sqrt(h) * z.next().to(torch.float64)
        if self.correction and t > 0:
            score = -(x + (1 - t) * vel) / t  # -eps_hat / t
            x_next = x_next + 0.5 * sigma**2 * score * h
        return x_next
