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
