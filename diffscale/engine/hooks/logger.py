"""LoggerHook: a progress bar (rank 0), a text log and TensorBoard scalars in work_dir.

Values are read from the device only every `interval` steps, so logging adds no host syncs in between.
"""

import logging
import resource
import time

import torch
from tqdm import tqdm

from diffscale.engine.hooks.base import Hook
from diffscale.registry import HOOKS

log = logging.getLogger("diffscale")


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@HOOKS.register_module()
class LoggerHook(Hook):
    def __init__(self, interval: int = 10):
        self.interval = interval

    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        # Made at the first step, when a resumed run knows where it starts.
        self.bar: tqdm | None = None
        self.t0: float | None = None
        self.window: list[dict] = []

    def after_step(self, metrics: dict) -> None:
        trainer = self.trainer
        if self.t0 is None:
            self.t0, self.nimg0 = time.perf_counter(), trainer.nimg - trainer.batch_size
        if self.bar is None:
            self.bar = tqdm(total=trainer.max_iters, initial=trainer.step - 1, disable=not trainer.dist.is_main,
                            dynamic_ncols=True, mininterval=1.0, desc="train")
        self.bar.update(1)
        self.window.append(metrics)
        if trainer.step % self.interval and trainer.step != trainer.max_iters:
            return
        losses = torch.stack([m["loss"] for m in self.window]).float()
        norms = torch.stack([m["grad_norm"].float().cpu() for m in self.window])
        elapsed = time.perf_counter() - self.t0
        scalars = {
            "train/loss": losses.nanmean().item(),
            "train/grad_norm": norms.nanmean().item(),
            "train/lr": metrics["lr"],
            "train/img_per_s": (trainer.nimg - self.nimg0) / max(elapsed, 1e-9),
            "train/peak_memory_mib": peak_memory_mib(trainer.dist.device),
            "train/skipped_steps": float(trainer.skipped_steps),
        }
        self.window, self.t0, self.nimg0 = [], time.perf_counter(), trainer.nimg
        if not trainer.dist.is_main:
            return
        for key, value in scalars.items():
            trainer.writer.add_scalar(key, value, trainer.step)
        self.bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", img_s=f"{scalars['train/img_per_s']:.0f}")
        log.info("step %d/%d  " + "  ".join(f"{k.split('/')[1]} %.5g" for k in scalars), trainer.step,
                 trainer.max_iters, *scalars.values())

    def after_run(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.trainer.dist.is_main:
            self.trainer.writer.flush()
