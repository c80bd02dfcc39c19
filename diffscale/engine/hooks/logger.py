"""LoggerHook: a progress bar (rank 0), a text log and TensorBoard scalars in work_dir.

Values are read from the device only every `interval` steps, so logging adds no host syncs in between.
"""

import logging
import resource
import time

import torch
from tqdm import tqdm

from diffscale.engine.hooks.base import Hook, every
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
        self.lrs: dict[str, float] = {}  # the last lr of each part

    @staticmethod
    def _values(metrics: dict) -> dict[str, torch.Tensor]:
        """This iteration's device values by TensorBoard tag: `loss/<phase>`, `grad_norm/<part>`, the objective's
        `<phase>/<name>`, and train/loss, train/grad_norm of the phase the iteration ends with (the only one of a
        one-part run)."""
        values = {}
        for name, phase in metrics["phases"].items():
            values[f"loss/{name}"] = phase["loss"]
            values.update({f"grad_norm/{part}": norm for part, norm in phase["grad_norms"].items()})
            values.update({f"{name}/{key}": v for key, v in phase["logs"].items()})
            values["train/loss"], values["train/grad_norm"] = phase["loss"], phase["grad_norm"]
        return values

    def before_step(self, batch: dict) -> dict:
        # The first window's clock starts with the first micro-batch, before that step's images are counted
        # (trainer.nimg moves when the step ends): images and seconds then cover the same steps.
        if self.t0 is None:
            self.t0, self.nimg0 = time.perf_counter(), self.trainer.nimg
        return batch

    def after_step(self, metrics: dict) -> None:
        trainer = self.trainer
        if self.t0 is None:  # no micro-batch went through before_step: count from here, never an untimed step
            self.t0, self.nimg0 = time.perf_counter(), trainer.nimg
        if self.bar is None:
            self.bar = tqdm(total=trainer.max_iters, initial=trainer.step - 1, disable=not trainer.dist.is_main,
                            dynamic_ncols=True, mininterval=1.0, desc="train")
        self.bar.update(1)
        self.window.append(self._values(metrics))
        self.lrs.update(metrics["lrs"])
        if not every(trainer.step, self.interval, trainer.max_iters):
            return
        tags = list(dict.fromkeys(tag for values in self.window for tag in values))
        # One host read per log step: every tag's window mean (NaN where a phase skipped a non-finite step).
        means = torch.stack([torch.stack([v[tag].float().cpu() for v in self.window if tag in v]).nanmean()
                             for tag in tags]).tolist()
        averaged = dict(zip(tags, means, strict=True))
        elapsed = time.perf_counter() - self.t0
        scalars = {
            "train/loss": averaged.pop("train/loss"),
            "train/grad_norm": averaged.pop("train/grad_norm"),
            "train/lr": metrics["lr"],
            "train/img_per_s": (trainer.nimg - self.nimg0) / max(elapsed, 1e-9),
            "train/peak_memory_mib": peak_memory_mib(trainer.dist.device),
            "train/skipped_steps": float(trainer.skipped_steps),
        }
        scalars.update(averaged)
        scalars.update({f"lr/{part}": lr for part, lr in self.lrs.items()})
        self.window, self.t0, self.nimg0 = [], time.perf_counter(), trainer.nimg
        if not trainer.dist.is_main:
            return
        for key, value in scalars.items():
            trainer.writer.add_scalar(key, value, trainer.step)
        self.bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", img_s=f"{scalars['train/img_per_s']:.0f}")
        shown = list(scalars)[:6] + [k for k in averaged if len(metrics["phases"]) > 1 or len(self.lrs) > 1]
        log.info("step %d/%d  " + "  ".join(f"{k.split('/', 1)[1] if k.startswith('train/') else k} %.5g"
                                           for k in shown), trainer.step, trainer.max_iters,
                 *(scalars[k] for k in shown))

    def after_interrupt(self) -> None:
        self.after_run()

    def after_run(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.trainer.dist.is_main:
            self.trainer.writer.flush()
