"""DeepSpeed ZeRO stage 1, 2 or 3 with its own engine, precision handling and checkpoints.

DeepSpeed divides the loss by the accumulation rounds itself and skips a step whose gradient norm is
not finite (ZeRO 1-3, fp32 and bf16 as well as fp16), so the trainer only reads the outcome.
"""

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from diffscale.engine.checkpoint import load_file, save_file
from diffscale.engine.strategies.base import STEP_NONFINITE, STEP_OK, STEP_OVERFLOW, Strategy
from diffscale.errors import ConfigError
from diffscale.registry import OPTIMIZERS, STRATEGIES, build
from diffscale.utils.dist import barrier

DS_TAG = "state"


@STRATEGIES.register_module(name="deepspeed")
class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, dist_info, precision: str, zero_stage: int = 2, config: dict | None = None, **_ignored):
        super().__init__(dist_info, precision)
        self.zero_stage, self.extra_config = zero_stage, config or {}

    def prepare(self, model: nn.Module, optimizer_cfg: dict, batch_gpu: int, accum: int,
                grad_clip: float | None) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        if self.precision == "fp16" and not get_accelerator().is_fp16_supported():
            raise ConfigError(f"train_cfg.precision: DeepSpeed does not support fp16 on this device "
                              f"({get_accelerator().device_name()}); use bf16 or fp32")
        config = {
            "train_batch_size": batch_gpu * accum * self.dist.world_size,
            "train_micro_batch_size_per_gpu": batch_gpu,
            "gradient_accumulation_steps": accum,
            "gradient_clipping": grad_clip or 0.0,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16", "initial_scale_power": 16},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 1 << 30,  # the trainer logs; keep DeepSpeed quiet
            **self.extra_config,
        }
        model = model.to(self.dist.device)
        optimizer = build(OPTIMIZERS, optimizer_cfg, "optimizer", params=[p for p in model.parameters()])
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False)
        self.module, self.is_last = model, True

    def micro_step_context(self, is_last: bool):
        self.is_last = is_last
        return contextlib.nullcontext()  # DeepSpeed decides when to reduce from its micro-step count

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # DeepSpeed scales by 1 / accumulation rounds
        if not self.is_last:
            self.model.step()  # not a boundary: DeepSpeed only counts the micro-step

    def step(self, loss_finite: torch.Tensor) -> tuple[torch.Tensor, str]:
        self.model.step()  # the boundary: reduce, clip, check, step, zero
        skipped = bool(getattr(self.model.optimizer, "overflow", False))
        norm = self.model.get_global_grad_norm()
        grad_norm = torch.tensor(float("nan") if norm is None else float(norm))
        finite_loss = bool(loss_finite.item())  # the step's host sync (the trainer relies on one)
        if not skipped:
            return grad_norm, STEP_OK
        return grad_norm, STEP_OVERFLOW if (self.precision == "fp16" and finite_loss) else STEP_NONFINITE

    def set_lr(self, lr: float) -> None:
        for group in self.model.optimizer.param_groups:
            group["lr"] = lr

    def param_tensors(self) -> dict[str, torch.Tensor]:
        if self.zero_stage == 3:  # this rank's flat partition of each parameter
            return {n: p.ds_tensor.detach() for n, p in self.module.named_parameters() if p.requires_grad}
        return {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}

    def gather_full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if self.zero_stage != 3:
            return {n: t.detach().cpu().clone() for n, t in tensors.items()} if self.dist.is_main else None
        params, full = dict(self.module.named_parameters()), {}
        for name, local in tensors.items():
            parts = [torch.empty_like(local) for _ in range(self.dist.world_size)]
            dist.all_gather(parts, local.contiguous())
            p = params[name]
            full[name] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).cpu()
        return full if self.dist.is_main else None

    def _partition(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a full tensor, in ZeRO-3's layout: flat, padded, chunk `rank`."""
        size = like.numel()
        flat = torch.zeros(size * self.dist.world_size, dtype=full.dtype)
        flat[: full.numel()] = full.flatten()
        return flat[self.dist.rank * size: (self.dist.rank + 1) * size]

    def full_model_state(self) -> dict[str, torch.Tensor] | None:
        if self.zero_stage != 3:
            return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()} \
                if self.dist.is_main else None
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()} \
                if self.dist.is_main else None
        return state

    def save(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        self.model.save_checkpoint(str(ckpt_dir / "ds"), tag=DS_TAG, save_latest=False)
        full = {key: self.gather_full(tensors) for key, tensors in mirrors.items()}
        if self.dist.is_main:
            save_file(full, ckpt_dir / "mirrors.pt")
        barrier()

    def load(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        self.model.load_checkpoint(str(ckpt_dir / "ds"), tag=DS_TAG, load_optimizer_states=True,
                                   load_lr_scheduler_states=False)
        full = load_file(ckpt_dir / "mirrors.pt")
        for key, tensors in mirrors.items():
            for name, tensor in tensors.items():
                src = full[key][name]
                if self.zero_stage == 3:
                    src = self._partition(src, tensor)
                tensor.copy_(src.to(tensor.device))
