"""Learning-rate schedules: `factor(step)` multiplies the optimizer's `lr` (steps count from 0)."""

import math

import torch

from diffscale.registry import LR_SCHEDULES, OPTIMIZERS

# RAdam (Liu et al. 2020): consistency distillation's CIFAR-10 optimizer (openai/consistency_models_cifar10).
for _opt in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RAdam, torch.optim.SGD):
    OPTIMIZERS.register_module(module=_opt)


@LR_SCHEDULES.register_module()
class ConstantLR:
    def __init__(self, warmup_iters: int = 0):
        self.warmup_iters = warmup_iters

    def factor(self, step: int) -> float:
        return min((step + 1) / self.warmup_iters, 1.0) if self.warmup_iters else 1.0


@LR_SCHEDULES.register_module()
class InvSqrtLR:
    """EDM2 (Karras et al. 2024, eq. 16): lr_ref / sqrt(max(t / t_ref, 1)) after a linear ramp-up."""

    def __init__(self, ref_iters: int, rampup_iters: int = 0):
        self.ref_iters, self.rampup_iters = ref_iters, rampup_iters

    def factor(self, step: int) -> float:
        t = step + 1
        ramp = min(t / self.rampup_iters, 1.0) if self.rampup_iters else 1.0
        return ramp / math.sqrt(max(t / self.ref_iters, 1.0))


@LR_SCHEDULES.register_module()
class WarmupCosineLR:
    def __init__(self, max_iters: int, warmup_iters: int = 0, min_factor: float = 0.0):
        self.max_iters, self.warmup_iters, self.min_factor = max_iters, warmup_iters, min_factor

    def factor(self, step: int) -> float:
        if step < self.warmup_iters:
            return (step + 1) / self.warmup_iters
        progress = (step - self.warmup_iters) / max(self.max_iters - self.warmup_iters, 1)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
