"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) and DDIM (Song et al. 2021, eq. 12) for networks trained
with DDPMLoss: net(x_t, t, labels) -> C or 2C channels (eps / x0 / v prediction, optionally the variance).

DDIM on a strided subset tau of the T steps, with ab = ab[tau_i], ab' = ab[tau_{i-1}] (1 at the first step):
  x' = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps + s z,  sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab');
  s = sigma for a fixed variance; for a learned variance (the DDPM seed's choice) the added noise is
  s = eta sqrt(Sigma_theta), the network's variance of the respaced step, while sigma keeps the direction term.
eta = 0 is deterministic; eta = 1 over all T steps with a fixed small variance is ancestral DDPM.

Guidance (classifier-free or autoguidance) mixes the prediction channels only, through the shared guidance
path: pred = pred_guide + w (pred - pred_guide); the variance channels are the main network's. Our w is the
weight of sampling/guidance.py (w = 1: none); the DDPM seed's w_seed in (1 + w_seed) eps_c - w_seed eps_null
is w = 1 + w_seed, so its w_seed = 4 is guidance=5.

Step noise: sample i's noise at every step comes from its own generator (seeded from its sample seed, on the
CPU), so a sample is the same at any batch size, world size and device, as the initial noise is.
"""

import numpy as np
import torch

from diffscale.diffusion.ddpm import build_diffusion
from diffscale.errors import ConfigError
from diffscale.registry import SAMPLERS
from diffscale.sampling.guidance import Denoiser, guided
from diffscale.utils.seeding import PerExampleNoise

STEP_NOISE_SALT = 0x9E3779B97F4A7C15  # keeps the step-noise streams apart from the initial-noise stream


def step_noise(seeds: torch.Tensor, shape: tuple[int, ...], num_steps: int, device: torch.device) -> PerExampleNoise:
    """Each sample's step noise, from its own CPU generator seeded by (a hash of) its sample seed."""
    generators = [torch.Generator().manual_seed((int(s) * 0x2545F4914F6CDD1D + STEP_NOISE_SALT) % (1 << 63))
                  for s in seeds]
    return PerExampleNoise(generators, shape, num_steps, device)


def strided_timesteps(num_timesteps: int, num_steps: int | None, step_size: int | None) -> np.ndarray:
    """tau: every `step_size`-th step from 0, or `num_steps` steps floor(i T / num_steps) (DDIM's uniform
    spacing from 0; an exact stride when it divides T, as improved DDPM's 'ddimN'), or all T. The last steps of a
    cosine schedule (alpha_bar -> 0) are left out unless every step is taken: starting DDIM there amplifies the
    noise prediction's error by 1 / sqrt(alpha_t) (32x at beta = 0.999)."""
    if num_steps is not None and step_size is not None:
        raise ConfigError(f"sampler: give num_steps or step_size, not both (got {num_steps}, {step_size})")
    if step_size is not None:
        if not isinstance(step_size, int) or not 1 <= step_size < num_timesteps:
            raise ConfigError(f"sampler.step_size: expected an integer in [1, {num_timesteps}), got {step_size!r}")
        return np.arange(0, num_timesteps, step_size)
    if num_steps is None:
        return np.arange(num_timesteps)
    if not isinstance(num_steps, int) or not 2 <= num_steps <= num_timesteps:
        raise ConfigError(f"sampler.num_steps: expected an integer in [2, {num_timesteps}], got {num_steps!r}")
    return (np.arange(num_steps) * num_timesteps) // num_steps


class _DiscreteSampler:
    takes_seeds = True  # generate() passes each sample's seed (for the step noise)

    def __init__(self, schedule: str = "cosine", num_timesteps: int = 1000, prediction: str = "eps",
                 variance: str = "learned_range", rescale_timesteps: bool = True, num_steps: int | None = None,
                 step_size: int | None = None, clip_denoised: bool = True, guidance: float = 1.0):
        self.base = build_diffusion(schedule, num_timesteps, prediction, variance, "simple", rescale_timesteps)
        tau = strided_timesteps(num_timesteps, num_steps, step_size)
        self.diffusion, self.tau = self.base.space(tau) if len(tau) < num_timesteps else (self.base,
                                                                                          torch.from_numpy(tau))
        self.num_steps, self.clip_denoised, self.guidance = len(tau), clip_denoised, guidance

    def _step(self, mv, x: torch.Tensor, i: int, z: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _needs_noise(self) -> bool:
        return True

    @torch.no_grad()
    def __call__(self, net: Denoiser, noise: torch.Tensor, labels: torch.Tensor | None = None,
                 guide: Denoiser | None = None, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Samples [B, C, ...] float32 from unit `noise` [B, C, ...] (x_T) and class `labels` [B] (or None);
        `seeds` [B] seed the step noise (default 0..B-1)."""
        B, C = noise.shape[0], noise.shape[1]
        D = guided(net, guide, self.guidance, channels=C)
        steps = None
        if self._needs_noise():
            seeds = torch.arange(B) if seeds is None else seeds
            steps = step_noise(seeds, tuple(noise.shape[1:]), self.num_steps - 1, noise.device)
        model_t = self.base.model_time(self.tau).to(noise.device)
        x = noise if noise.dtype == torch.float64 else noise.float()  # float64: exactness checks
        for i in reversed(range(self.num_steps)):
            t = torch.full((B,), i, dtype=torch.long, device=x.device)
            out = D(x, model_t[i].expand(B), labels)
            mv = self.diffusion.p_mean_variance(out, x, t, clip_denoised=self.clip_denoised)
            x = self._step(mv, x, i, steps.next().to(x.dtype) if steps is not None and i > 0 else None)
        return x


@SAMPLERS.register_module()
class DDPMSampler(_DiscreteSampler):
    """Ancestral sampling x_{t-1} ~ N(mu_theta, Sigma) over all T steps (or `num_steps` respaced ones, improved
    DDPM Sec. 4), Sigma fixed (small / large) or learned, as the network was trained."""

    def _step(self, mv, x: torch.Tensor, i: int, z: torch.Tensor | None) -> torch.Tensor:
        return mv.mean if z is None else mv.mean + (0.5 * mv.log_variance).exp() * z


@SAMPLERS.register_module()
class DDIMSampler(_DiscreteSampler):
    """DDIM over `num_steps` strided steps (or every `step_size`-th), stochasticity `eta` (module docstring)."""

    def __init__(self, num_steps: int | None = 100, step_size: int | None = None, eta: float = 0.0, **kw):
        if step_size is not None and num_steps == 100:
            num_steps = None  # an explicit step_size replaces the default step count
        if eta < 0:
            raise ConfigError(f"sampler.eta: expected >= 0, got {eta!r}")
        super().__init__(num_steps=num_steps, step_size=step_size, **kw)
        self.eta = float(eta)
        # Per-step coefficients in float64 (1 - ab / ab' = beta of the respaced step: sigma^2 = eta^2 beta_tilde,
        # without the cancellation of 1 - ab / ab' in float32 near t = 0).
        d = self.diffusion
        sigma2 = self.eta**2 * d.posterior_variance
        self.c_xstart = np.sqrt(d.alphas_cumprod_prev)
        self.c_eps = np.sqrt(np.clip(1 - d.alphas_cumprod_prev - sigma2, 0, None))
        self.sigma = np.sqrt(sigma2)

    def _needs_noise(self) -> bool:
        return self.eta > 0

    def _step(self, mv, x: torch.Tensor, i: int, z: torch.Tensor | None) -> torch.Tensor:
        mean = float(self.c_xstart[i]) * mv.pred_xstart + float(self.c_eps[i]) * mv.eps
        if z is None:
            return mean
        if self.diffusion.variance == "learned_range":
            return mean + self.eta * (0.5 * mv.log_variance).exp() * z
        return mean + float(self.sigma[i]) * z
