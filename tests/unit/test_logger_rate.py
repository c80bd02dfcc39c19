"""LoggerHook's img_per_s counts the images of the steps its clock timed (issue 15, item 7a): the first window
too, whose first step's images used to be counted before its timer started."""

from types import SimpleNamespace

import pytest
import torch

from diffscale.engine.hooks import logger as logger_module
from diffscale.engine.hooks.logger import LoggerHook
from diffscale.utils.dist import DistInfo


class Clock:
    """A perf_counter that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Writer:
    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append((step, value))

    def flush(self) -> None:
        pass


def metrics() -> dict:
    loss, norm = torch.tensor(1.0), torch.tensor(0.5)
    phase = {"loss": loss, "grad_norms": {"model": norm}, "logs": {}, "grad_norm": norm}
    return {"phases": {"main": phase}, "lrs": {"model": 1e-3}, "lr": 1e-3}


@pytest.mark.parametrize("interval", [1, 3])
def test_every_window_rate_is_images_over_seconds(monkeypatch, interval):
    clock = Clock()
    monkeypatch.setattr(logger_module, "time", SimpleNamespace(perf_counter=clock))  # this module's clock only
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    trainer = SimpleNamespace(step=0, nimg=0, batch_size=64, accum=2, max_iters=6, skipped_steps=0, dist=dist,
                              writer=Writer())
    hook = LoggerHook(interval=interval)
    hook.before_run(trainer)
    for _ in range(trainer.max_iters):  # as Trainer.train: micro-batches, the step (2 s), the counters, hooks
        for _ in range(trainer.accum):
            hook.before_step({})
            clock.now += 1.0
        trainer.step += 1
        trainer.nimg += trainer.batch_size
        hook.after_step(metrics())
    hook.after_run()
    rates = [v for _, v in trainer.writer.scalars["train/img_per_s"]]
    assert len(rates) == trainer.max_iters // interval
    assert rates == pytest.approx([32.0] * len(rates))  # 64 images per 2 s, from the first window on
