"""Hooks used only by tests, loaded through a config's `custom_imports = dict(imports=['tests.hooks_for_tests'])`."""

import time

import torch

from diffscale.engine.hooks.base import Hook
from diffscale.registry import HOOKS


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
