"""Hooks and an objective used only by tests, loaded through a config's
`custom_imports = dict(imports=['tests.hooks_for_tests'])`."""

import time

import torch

from diffscale.diffusion.base import LossOutput, Objective
from diffscale.engine.hooks.base import Hook
from diffscale.registry import HOOKS, OBJECTIVES


@HOOKS.register_module()
class SlowDownHook(Hook):
    """Sleep after every step so a test can kill the run at a predictable point."""

    def __init__(self, seconds: float = 0.1):
        self.seconds = seconds

    def after_step(self, metrics: dict) -> None:
        time.sleep(self.seconds)


@HOOKS.register_module()
class NaNInjectHook(Hook):
    """Turn the inputs of the given (0-based) steps, or of every step from `from_step` on, into NaN."""

    def __init__(self, steps: tuple[int, ...] = (), from_step: int | None = None):
        self.steps, self.from_step = set(steps), from_step

    def before_step(self, batch: dict) -> dict:
        step = self.trainer.step
        if step in self.steps or (self.from_step is not None and step >= self.from_step):
            batch = dict(batch, x=torch.full_like(batch["x"], float("nan")))
        return batch


@OBJECTIVES.register_module()
class TimeNoiseLoss(Objective):
    """A second single-model objective for tests of the protocol: a condition of other keys than EDM's (t in
    (0, 1) and noise; sigma = sigma_max * t), a plain x0-prediction error, and a log of whether the batch arrived
    with its condition already drawn (a curated batch does), so a test can see curation hand it over."""

    def __init__(self, sigma_max: float = 5.0):
        self.sigma_max = sigma_max

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> dict:
        t = torch.rand(x.shape[0], device=x.device, generator=generator).clamp(min=1e-3)
        return {"t": t, "noise": torch.randn(x.shape, device=x.device, generator=generator)}

    def per_example(self, model, batch: dict, cond: dict) -> torch.Tensor:
        x, sigma = batch["x"], self.sigma_max * cond["t"]
        D = model(x + sigma.reshape(-1, *([1] * (x.ndim - 1))) * cond["noise"], sigma, batch.get("label"))
        return (D.float() - x.float()).square().flatten(1).mean(1)

    def __call__(self, phase, models, batch, generator) -> LossOutput:
        out = super().__call__(phase, models, batch, generator)
        return LossOutput(out.loss, {"from_curation": torch.tensor(float("cond" in batch), device=out.loss.device)})
