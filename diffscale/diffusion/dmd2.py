"""DMD2: distribution matching distillation of a diffusion teacher into a one-step generator
(Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

Three parts: the one-step `generator` G (initialised from the teacher), the frozen teacher `real_score` D_real and
a `fake_score` D_fake (also initialised from the teacher) that tracks the generator's current distribution.
An iteration has up to two phases (DMD2's two time-scale rule, Sec. 4.2): every `gen_update_every`-th step the
generator takes one distribution-matching step; every step the fake score takes one denoising step on fresh
generator samples.

Generator phase (DMD eq. 7 with DMD2's normalisation): for x_g = G(sigma_gen z) and x_t = x_g + sigma eps,
    g = ((x_g - D_real(x_t)) - (x_g - D_fake(x_t))) / mean|x_g - D_real(x_t)|,
the approximate KL gradient between the fake and real distributions diffused to level sigma; the loss
0.5 * mean (x_g - sg(x_g - g))^2 has gradient g / numel with respect to x_g, so descending it moves each sample
towards the teacher's denoised estimate and away from the fake score's.

Fake-score phase: the EDM denoising loss (weight (sigma^2 + sd^2) / (sigma sd)^2) of D_fake on detached generator
samples, at a level uniform over the grid. This version has no GAN term and no regression loss; the data batch
supplies only the shape, device and class labels of what the generator makes.
"""

from collections.abc import Mapping

import torch
from torch import nn

from diffscale.diffusion.base import Cond, LossOutput, Objective, Phase
from diffscale.errors import ConfigError
from diffscale.registry import OBJECTIVES


def karras_grid(num_levels: int, sigma_min: float, sigma_max: float, rho: float,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The EDM discretisation (Karras et al. 2022, eq. 5) in ascending order: [num_levels] float32 noise levels,
    index 0 = sigma_min, index num_levels - 1 = sigma_max (same units as the data)."""
    i = torch.arange(num_levels, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((lo + i / (num_levels - 1) * (hi - lo)) ** rho).float()


def _per_example_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the non-batch dims: [B, ...] -> [B]."""
    return t.flatten(1).mean(1)


def _expand(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ...] broadcastable against a [B, ...] tensor of `ndim` dims."""
    return v.reshape(-1, *([1] * (ndim - 1)))


@OBJECTIVES.register_module()
class DMD2Loss(Objective):
    """DMD2 objective over the parts ('generator', 'fake_score', 'real_score'); validation and curation score the
    fake score's denoising loss (`score_part`). Every random draw comes from the trainer's generator, in the order
    documented in each method, so a resumed run draws the same numbers."""

    parts = ("generator", "fake_score", "real_score")
    score_part = "fake_score"

    def __init__(
        self,
        gen_update_every: int = 5,  # generator steps on iterations step % gen_update_every == 0 (DMD2: 5)
        num_levels: int = 1000,  # noise levels of the Karras grid the losses draw from
        sigma_min: float = 0.002,  # lowest grid level (index 0)
        sigma_max: float = 80.0,  # highest grid level (index num_levels - 1)
        rho: float = 7.0,  # grid curvature (EDM eq. 5)
        min_level: int = 20,  # generator loss: level index uniform in [min_level, max_level] (DMD2: 2%..98%)
        max_level: int = 980,  # inclusive
        sigma_gen: float | None = None,  # the generator's input noise level; None: sigma_max
        sigma_data: float = 0.5,  # std of the data (EDM loss weighting)
    ):
        if not isinstance(gen_update_every, int) or gen_update_every < 1:
            raise ConfigError(f"objective.gen_update_every: expected an int >= 1, got {gen_update_every!r}")
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ConfigError(f"objective.num_levels: expected an int >= 2, got {num_levels!r}")
        if not 0 < sigma_min:
            raise ConfigError(f"objective.sigma_min: expected > 0, got {sigma_min!r}")
        if not sigma_max > sigma_min:
            raise ConfigError(f"objective.sigma_max: expected > sigma_min ({sigma_min}), got {sigma_max!r}")
        if not rho > 0:
            raise ConfigError(f"objective.rho: expected > 0, got {rho!r}")
        if not isinstance(min_level, int) or not 0 <= min_level < num_levels:
            raise ConfigError(f"objective.min_level: expected an int in [0, {num_levels}), got {min_level!r}")
        if not isinstance(max_level, int) or not min_level <= max_level < num_levels:
            raise ConfigError(f"objective.max_level: expected an int in [min_level ({min_level}), {num_levels}), "
                             f"got {max_level!r}")
        if sigma_gen is not None and not sigma_gen > 0:
            raise ConfigError(f"objective.sigma_gen: expected > 0 or None, got {sigma_gen!r}")
        if not sigma_data > 0:
            raise ConfigError(f"objective.sigma_data: expected > 0, got {sigma_data!r}")
        self.gen_update_every, self.num_levels = gen_update_every, num_levels
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.min_level, self.max_level = min_level, max_level
        self.sigma_gen = float(sigma_max if sigma_gen is None else sigma_gen)
        self.sigma_data = sigma_data

    def phases(self, step: int) -> list[Phase]:
        gen = [Phase("generator", ("generator",))] if step % self.gen_update_every == 0 else []
        return gen + [Phase("fake_score", ("fake_score",))]

    def grid(self, device: torch.device) -> torch.Tensor:
        """The noise levels [num_levels] float32 on `device`, ascending."""
        return karras_grid(self.num_levels, self.sigma_min, self.sigma_max, self.rho, device)

    def generate(self, G: nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        """One-step samples [B, ...] like `x`: G(sigma_gen z, sigma_gen, labels), z ~ N(0, I) (draw 1: z)."""
        z = torch.randn(x.shape, device=x.device, generator=generator)
        sigma = torch.full((x.shape[0],), self.sigma_gen, device=x.device)
        return G(z * self.sigma_gen, sigma, labels).float()

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> Cond:
        """sigma [B] uniform over the grid's levels and unit noise like `x` (draws: level index, then noise)."""
        idx = torch.randint(0, self.num_levels, (x.shape[0],), device=x.device, generator=generator)
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        return {"sigma": self.grid(x.device)[idx], "noise": noise}

    def per_example(self, model: nn.Module, batch: dict, cond: Cond) -> torch.Tensor:
        """EDM weighted denoising loss [B] (float32, mean over elements) of `model` on batch['x'] at `cond`:
        lambda(sigma) mean (D(x + sigma n, sigma) - x)^2, lambda = (sigma^2 + sd^2) / (sigma sd)^2."""
        x = batch["x"].float()
        s = _expand(cond["sigma"], x.ndim)
        D_x = model(x + s * cond["noise"], cond["sigma"], batch.get("label")).float()
        weight = (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        return _per_example_mean(weight * (D_x - x) ** 2)

    def __call__(self, phase: Phase, models: Mapping[str, nn.Module], batch: dict,
                 generator: torch.Generator) -> LossOutput:
        if phase.name == "generator":
            return self.generator_loss(models, batch, generator)
        if phase.name == "fake_score":
            return self.fake_score_loss(models, batch, generator)
        raise ValueError(f"DMD2Loss: unknown phase '{phase.name}' (expected 'generator' or 'fake_score')")

    def generator_loss(self, models: Mapping[str, nn.Module], batch: dict,
                       generator: torch.Generator) -> LossOutput:
        """Distribution-matching loss [B] of the generator; gradients reach only the generator.
        Draws: z [B, ...], level index [B] in [min_level, max_level], noise eps [B, ...]."""
        x, labels = batch["x"], batch.get("label")
        x_g = self.generate(models["generator"], x, labels, generator)
        idx = torch.randint(self.min_level, self.max_level + 1, (x.shape[0],), device=x.device, generator=generator)
        sigma = self.grid(x.device)[idx]
        eps = torch.randn(x.shape, device=x.device, generator=generator)
        with torch.no_grad():  # the scores are targets here: neither is updated by this phase
            x_t = x_g.detach() + _expand(sigma, x.ndim) * eps
            p_real = x_g.detach() - models["real_score"](x_t, sigma, labels).float()
            p_fake = x_g.detach() - models["fake_score"](x_t, sigma, labels).float()
            # DMD's per-example normaliser: the mean absolute distance to the teacher's denoised estimate.
            w = p_real.abs().flatten(1).mean(1)
            # A zero normaliser (the teacher reproduces x_g exactly) gives 0/0 or x/0: no usable direction, so every
            # non-finite entry becomes 0 rather than float max, which would overflow the squared loss to inf.
            g = torch.nan_to_num((p_real - p_fake) / _expand(w, x.ndim), nan=0.0, posinf=0.0, neginf=0.0)
            target = x_g.detach() - g
        loss = 0.5 * _per_example_mean((x_g - target) ** 2)
        return LossOutput(loss, {"dmd_weight": w.mean(), "grad_norm_dm": g.abs().mean()})

    def fake_score_loss(self, models: Mapping[str, nn.Module], batch: dict,
                        generator: torch.Generator) -> LossOutput:
        """EDM denoising loss [B] of the fake score on fresh, detached generator samples; gradients reach only the
        fake score. Draws: z [B, ...], then those of `sample_condition` (level index [B] over the grid, noise)."""
        x, labels = batch["x"], batch.get("label")
        with torch.no_grad():  # the generator is not updated by this phase
            x_g = self.generate(models["generator"], x, labels, generator)
        fake = {"x": x_g, "label": labels}
        return LossOutput(self.per_example(models["fake_score"], fake, self.sample_condition(x_g, generator)), {})
