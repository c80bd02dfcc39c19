"""PyTorch FSDP2: `fully_shard` on every block, then on the root (torchtitan's order), with a mixed-precision
policy, for every part (frozen ones too: their weights are sharded, they have no optimizer). Checkpoints use
torch.distributed.checkpoint (DCP), one state for all parts, so a run saved on N ranks resumes on M.

torch.distributed.checkpoint, fsdp and tensor are imported where used: they cost 1.5 s per process start, which
a ddp or deepspeed run (or a tool that only reads a ddp checkpoint) should not pay."""

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from diffscale.engine.parts import Part
from diffscale.engine.precision import DTYPES
from diffscale.engine.safe_load import dcp_planner, dcp_reader, refusing
from diffscale.engine.strategies.base import Mirrors, TorchStrategy
from diffscale.registry import STRATEGIES


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: a model may say (`fsdp_units()`), or the body a preconditioning wrapper
    holds as `net` (EDMPrecond(SongUNet), ...) may; else every ModuleList entry."""
    for candidate in (module, getattr(module, "net", None)):
        if isinstance(candidate, nn.Module) and hasattr(candidate, "fsdp_units"):
            return list(candidate.fsdp_units())
    return [child for m in module.modules() if isinstance(m, nn.ModuleList) for child in m]


@STRATEGIES.register_module(name="fsdp")
class FSDPStrategy(TorchStrategy):
    name = "fsdp"

    def __init__(self, dist_info, precision: str, reshard_after_forward: bool = True, **_ignored):
        super().__init__(dist_info, precision)
        self.reshard_after_forward = reshard_after_forward
        self.mesh = None

    def wrap(self, module: nn.Module, part: Part) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if self.mesh is None:
            self.mesh = init_device_mesh(self.dist.device.type, (self.dist.world_size,))
        # Compute in the run's precision; reduce gradients in fp32 so accumulation does not lose bits.
        policy = MixedPrecisionPolicy(param_dtype=DTYPES[self.precision], reduce_dtype=torch.float32)
        kw = dict(mesh=self.mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        for unit in shard_units(module):
            fully_shard(unit, **kw)
        fully_shard(module, **kw)
        return module

    def micro_step_context(self, update: tuple[str, ...], is_last: bool) -> contextlib.AbstractContextManager:
        for name in update:
            self.modules[name].set_requires_gradient_sync(is_last)  # reduce-scatter once, on the last micro-batch
        return contextlib.nullcontext()

    def local_grads(self, part: str) -> list[torch.Tensor]:
        return [p.grad.to_local() for p in self.modules[part].parameters() if p.grad is not None]

    def grad_norms(self, grads: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        # Shards are disjoint: the global squared norm is the sum of the local ones; one all-reduce for all parts.
        sq = torch.stack([torch.stack(torch._foreach_norm(g)).float().square().sum() if g else torch.zeros(())
                          for g in grads.values()]).to(self.dist.device)
        dist.all_reduce(sq)
        return sq.sqrt()

    def param_tensors(self, part: str) -> dict[str, torch.Tensor]:
        return {n: p.detach().to_local() for n, p in self.modules[part].named_parameters() if p.requires_grad}

    def _as_dtensors(self, part: str, tensors: dict[str, torch.Tensor]) -> dict:
        from torch.distributed.tensor import DTensor

        params = dict(self.modules[part].named_parameters())
        return {
            n: DTensor.from_local(t, params[n].device_mesh, params[n].placements, run_check=False,
                                  shape=params[n].shape, stride=params[n].stride())
            for n, t in tensors.items()
        }

    def gather_full(self, part: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        full = {n: d.full_tensor().cpu() for n, d in self._as_dtensors(part, tensors).items()}
        return full if self.dist.is_main else None

    def full_state(self, part: str) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.modules[part], options=options)
        return state if self.dist.is_main else None

    def _state(self, mirrors: Mirrors) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        state = {}
        for name, module in self.modules.items():
            if name in self.optimizers:
                model_state, optim_state = get_state_dict(module, self.optimizers[name])
                entry = {"model": model_state, "optimizer": optim_state}
            else:
                entry = {"model": get_model_state_dict(module)}
            entry["mirrors"] = {k: self._as_dtensors(name, v) for k, v in mirrors.get(name, {}).items()}
            state[name] = entry
        return state

    def save(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(mirrors), checkpoint_id=str(ckpt_dir / "dcp"))

    def load(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        state = self._state(mirrors)
        # reshards to this world size; reader and planner run no code from the files (engine/safe_load.py)
        with refusing(ckpt_dir / "dcp"):
            dcp.load(state, storage_reader=dcp_reader(ckpt_dir / "dcp"), planner=dcp_planner())
        for name, module in self.modules.items():
            entry = state[name]
            if name in self.optimizers:
                set_state_dict(module, self.optimizers[name], model_state_dict=entry["model"],
                               optim_state_dict=entry["optimizer"])
            else:
                set_model_state_dict(module, entry["model"])
            for key, tensors in mirrors.get(name, {}).items():
                for param, tensor in tensors.items():
                    tensor.copy_(entry["mirrors"][key][param].to_local())
