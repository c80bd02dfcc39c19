"""DistributedDataParallel, and the plain single process (no wrapper) when the world size is 1."""

import contextlib
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffscale.engine.checkpoint import load_file, save_file
from diffscale.engine.strategies.base import TorchStrategy
from diffscale.registry import STRATEGIES
from diffscale.utils.dist import barrier


@STRATEGIES.register_module(name="ddp")
class DDPStrategy(TorchStrategy):
    name = "ddp"

    def __init__(self, dist_info, precision: str, find_unused_parameters: bool = False, **_ignored):
        super().__init__(dist_info, precision)
        self.find_unused_parameters = find_unused_parameters

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.dist.world_size == 1:
            return module
        device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids,
                                       find_unused_parameters=self.find_unused_parameters)

    def micro_step_context(self, is_last: bool):
        if is_last or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()  # accumulate locally; all-reduce once on the last micro-batch

    def param_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}

    def gather_full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        return {n: t.detach().cpu().clone() for n, t in tensors.items()} if self.dist.is_main else None

    def full_model_state(self) -> dict[str, torch.Tensor] | None:
        return self.gather_full(self.module.state_dict())

    def save(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        if self.dist.is_main:  # replicas are identical: rank 0 writes for all
            save_file({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "mirrors": mirrors}, ckpt_dir / "model.pt")
        barrier()

    def load(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        state = load_file(ckpt_dir / "model.pt", self.dist.device)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, tensors in mirrors.items():
            for name, tensor in tensors.items():
                tensor.copy_(state["mirrors"][key][name])
