"""PyTorch FSDP2: `fully_shard` on every block, then on the root (torchtitan's order), with a mixed-precision
policy. Checkpoints use torch.distributed.checkpoint (DCP), so a run saved on N ranks resumes on M."""

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from diffscale.engine.precision import DTYPES
from diffscale.engine.strategies.base import TorchStrategy
from diffscale.registry import STRATEGIES


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: a model may say (`fsdp_units()`), else every ModuleList entry."""
    if hasattr(module, "fsdp_units"):
        return list(module.fsdp_units())
    return [child for m in module.modules() if isinstance(m, nn.ModuleList) for child in m]


@STRATEGIES.register_module(name="fsdp")
class FSDPStrategy(TorchStrategy):
    name = "fsdp"

    def __init__(self, dist_info, precision: str, reshard_after_forward: bool = True, **_ignored):
        super().__init__(dist_info, precision)
        self.reshard_after_forward = reshard_after_forward

    def wrap(self, module: nn.Module) -> nn.Module:
        mesh = init_device_mesh(self.dist.device.type, (self.dist.world_size,))
        dtype = DTYPES[self.precision]
        # Compute in the run's precision; reduce gradients in fp32 so accumulation does not lose bits.
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for unit in shard_units(module):
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        return module

    def micro_step_context(self, is_last: bool):
        self.module.set_requires_gradient_sync(is_last)  # reduce-scatter once, on the last micro-batch
        return contextlib.nullcontext()

    def local_grads(self) -> list[torch.Tensor]:
        return [p.grad.to_local() for p in self.module.parameters() if p.grad is not None]

    def grad_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        # Shards are disjoint: the global squared norm is the sum of the local ones.
        sq = torch.stack(torch._foreach_norm(grads)).float().square().sum() if grads else torch.zeros(())
        sq = sq.to(self.dist.device)
        dist.all_reduce(sq)
        return sq.sqrt()

    def param_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to_local() for n, p in self.module.named_parameters() if p.requires_grad}

    def _as_dtensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, DTensor]:
        params = dict(self.module.named_parameters())
        return {
            n: DTensor.from_local(t, params[n].device_mesh, params[n].placements, run_check=False,
                                  shape=params[n].shape, stride=params[n].stride())
            for n, t in tensors.items()
        }

    def gather_full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        full = {n: d.full_tensor().cpu() for n, d in self._as_dtensors(tensors).items()}
        return full if self.dist.is_main else None

    def full_model_state(self) -> dict[str, torch.Tensor] | None:
        state = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.dist.is_main else None

    def _state(self, mirrors: dict[str, dict[str, torch.Tensor]]) -> dict:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        return {"model": model_state, "optimizer": optim_state,
                "mirrors": {k: self._as_dtensors(v) for k, v in mirrors.items()}}

    def save(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        dcp.save(self._state(mirrors), checkpoint_id=str(ckpt_dir / "dcp"))

    def load(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        state = self._state(mirrors)
        dcp.load(state, checkpoint_id=str(ckpt_dir / "dcp"))  # reshards to this world size
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        for key, tensors in mirrors.items():
            for name, tensor in tensors.items():
                tensor.copy_(state["mirrors"][key][name].to_local())

