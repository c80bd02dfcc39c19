"""CheckpointHook: save every `interval` steps and at the end of the run (the trainer does the writing)."""

from diffscale.engine.hooks.base import Hook
from diffscale.registry import HOOKS


@HOOKS.register_module()
class CheckpointHook(Hook):
    def __init__(self, interval: int, keep: int = 3):
        self.interval, self.keep = interval, keep

    def after_step(self, metrics: dict) -> None:
        step = self.trainer.step
        if step % self.interval == 0 or step == self.trainer.max_iters:
            self.trainer.save_checkpoint(keep=self.keep)
