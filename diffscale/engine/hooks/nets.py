"""The networks hooks sample with during training: a plain, frozen copy of one part (raw or an EMA average),
built from the consolidated weights, so sampling on one rank works under FSDP2 and ZeRO-3 too."""

import torch
import torch.distributed as dist
from torch import nn

from diffscale.evaluation.pipeline import part_model_cfg
from diffscale.registry import MODELS, build
from diffscale.utils.dist import broadcast_object, is_dist


def broadcast_state(state: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor]:
    """Rank 0's `state` (None elsewhere) on every rank, on `device`, one tensor broadcast each. Collective."""
    meta = broadcast_object([(k, tuple(v.shape), v.dtype) for k, v in state.items()] if state is not None else None)
    out = {}
    for name, shape, dtype in meta:
        t = state[name].to(device) if state is not None else torch.empty(shape, dtype=dtype, device=device)
        if is_dist():
            dist.broadcast(t, src=0)
        out[name] = t
    return out


def part_copy(trainer, part: str, ema: str | None, device: torch.device, all_ranks: bool = False) -> nn.Module | None:
    """An eval-mode copy of `part` without gradients, with the average `ema` substituted when given, on `device`:
    on rank 0 only (None elsewhere) or, with `all_ranks`, on every rank. Collective."""
    state = trainer.consolidated_state(part, ema)
    if all_ranks:
        state = broadcast_state(state, device)
    elif not trainer.dist.is_main:
        return None
    net = build(MODELS, part_model_cfg(trainer.cfg, part), f"test_cfg.part '{part}'")
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False)
