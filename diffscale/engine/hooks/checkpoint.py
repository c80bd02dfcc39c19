"""CheckpointHook: save every `interval` steps, at the end of the run, and when a hook asks for this step's
checkpoint (`trainer.checkpoint_requested`, e.g. EvalHook keeping best/); the trainer does the writing."""

from diffscale.engine.hooks.base import Hook, every
from diffscale.registry import HOOKS


@HOOKS.register_module()
class CheckpointHook(Hook):
    def __init__(self, interval: int, keep: int = 3):
        self.interval, self.keep = interval, keep

    def after_step(self, metrics: dict) -> None:
        trainer = self.trainer
        if every(trainer.step, self.interval, trainer.max_iters) or trainer.checkpoint_requested:
            trainer.save_checkpoint(keep=self.keep)
