"""DistributedDataParallel per trainable part, and plain modules when the world size is 1. Frozen parts stay plain
(replicated, eval mode, no gradients)."""

import contextlib
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffscale.engine.checkpoint import load_file, save_file
from diffscale.engine.parts import Part
from diffscale.engine.strategies.base import Mirrors, TorchStrategy
from diffscale.registry import STRATEGIES
from diffscale.utils.dist import barrier


@STRATEGIES.register_module(name="ddp")
class DDPStrategy(TorchStrategy):
    name = "ddp"

    def __init__(self, dist_info, precision: str, find_unused_parameters: bool = False, **_ignored):
        super().__init__(dist_info, precision)
        self.find_unused_parameters = find_unused_parameters

    def wrap(self, module: nn.Module, part: Part) -> nn.Module:
        if self.dist.world_size == 1 or not part.trainable:
            return module
        device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids,
                                       find_unused_parameters=self.find_unused_parameters)

    def micro_step_context(self, update: tuple[str, ...], is_last: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        if not is_last:  # accumulate locally; all-reduce once, on the last micro-batch
            for name in update:
                if isinstance(self.wrapped[name], DistributedDataParallel):
                    stack.enter_context(self.wrapped[name].no_sync())
        return stack

    def param_tensors(self, part: str) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.modules[part].named_parameters() if p.requires_grad}

    def gather_full(self, part: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        return {n: t.detach().cpu().clone() for n, t in tensors.items()} if self.dist.is_main else None

    def full_state(self, part: str) -> dict[str, torch.Tensor] | None:
        return self.gather_full(part, self.modules[part].state_dict())

    def save(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        if self.dist.is_main:  # replicas are identical: rank 0 writes for all, one file per part
            for name, module in self.modules.items():
                state = {"model": module.state_dict(), "mirrors": mirrors.get(name, {})}
                if name in self.optimizers:
                    state["optimizer"] = self.optimizers[name].state_dict()
                save_file(state, ckpt_dir / f"{name}.pt")
        barrier()

    def load(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        for name, module in self.modules.items():
            state = load_file(ckpt_dir / f"{name}.pt", self.dist.device)
            module.load_state_dict(state["model"])
            if name in self.optimizers:
                self.optimizers[name].load_state_dict(state["optimizer"])
            for key, tensors in mirrors.get(name, {}).items():
                for param, tensor in tensors.items():
                    tensor.copy_(state["mirrors"][key][param])
