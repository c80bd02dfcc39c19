"""Shared timing helpers for the benchmark suites."""

import time

import torch


def time_steps(step_fn, steps: int) -> float:
    """Seconds per call over `steps` calls (synchronising a GPU at the ends only); 0 calls (no warm-up) is 0."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps if steps else 0.0


def trainer_step(cfg) -> tuple:
    """A single-process Trainer built from `cfg`, its hooks started, and a function running one of its steps with
    the hooks' after_step (the progress bar off: the logger still logs)."""
    from tqdm import tqdm

    from diffscale.engine.trainer import Trainer
    from diffscale.utils.dist import init_distributed

    trainer = Trainer(cfg, init_distributed("none"))
    for hook in trainer.hooks:
        hook.before_run(trainer)
    trainer.hooks[0].bar = tqdm(disable=True)

    def step() -> None:
        metrics = trainer._train_step()
        for hook in trainer.hooks:
            hook.after_step(metrics)

    return trainer, step


def denoiser_passes(labels: torch.Tensor | None) -> tuple:
    """(fwd_bwd, fwd): factories of the single passes a distillation iteration is made of, timed alone for its ideal.
    fwd_bwd(net, x, sigma) runs one forward and backward of denoiser `net` (then drops the grads); fwd(net, x, sigma)
    one forward without autograd; both with class `labels`."""

    def fwd_bwd(net, inp, s):
        def run() -> None:
            net(inp, s, labels).square().mean().backward()
            net.zero_grad(set_to_none=True)
        return run

    def fwd(net, inp, s):
        def run() -> None:
            with torch.no_grad():
                net(inp, s, labels)
        return run

    return fwd_bwd, fwd
