"""The Strategy protocol: how a model is wrapped, stepped and saved. One file per strategy.

The trainer talks to every strategy through these methods only. Tensors that mirror the parameters
(the EMA copies) are handed to the strategy as `{name: local tensor}` so they are sharded, saved and
gathered exactly like the parameters they follow.
"""

from pathlib import Path

import torch
from torch import nn

from diffscale.engine.precision import DynamicLossScaler
from diffscale.registry import OPTIMIZERS, build
from diffscale.utils.dist import DistInfo

STEP_OK, STEP_OVERFLOW, STEP_NONFINITE = "ok", "overflow", "nonfinite"


class Strategy:
    """Interface. `model` is what the loop calls forward on; `module` the bare nn.Module."""

    name = "base"
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, dist_info: DistInfo, precision: str):
        self.dist, self.precision = dist_info, precision

    def prepare(self, model: nn.Module, optimizer_cfg: dict, batch_gpu: int, accum: int,
                grad_clip: float | None) -> None:
        """Move, wrap or shard `model` and build its optimizer from `optimizer_cfg`."""
        raise NotImplementedError

    def micro_step_context(self, is_last: bool):
        """Context for one micro-batch's forward and backward; gradient sync only on the last."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, loss_finite: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Clip, check, step the optimizer and zero the grads. Returns (grad norm, STEP_*)."""
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def param_tensors(self) -> dict[str, torch.Tensor]:
        """This rank's part of every trainable parameter (the full tensor where not sharded)."""
        raise NotImplementedError

    def gather_full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Full CPU tensors of parameter-shaped `tensors` on rank 0 (None elsewhere). Collective."""
        raise NotImplementedError

    def full_model_state(self) -> dict[str, torch.Tensor] | None:
        """The consolidated model state_dict on rank 0 (None elsewhere). Collective."""
        raise NotImplementedError

    def save(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write model, optimizer and parameter mirrors (EMA) into `ckpt_dir`. Collective."""
        raise NotImplementedError

    def load(self, ckpt_dir: Path, mirrors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore model and optimizer and fill `mirrors` (this rank's parts) in place. Collective."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Small strategy state kept by the trainer (e.g. the loss scale)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TorchStrategy(Strategy):
    """What DDP and FSDP2 share: our own accumulation, loss scaling, clipping and non-finite check."""

    def prepare(self, model: nn.Module, optimizer_cfg: dict, batch_gpu: int, accum: int,
                grad_clip: float | None) -> None:
        self.accum, self.grad_clip = accum, grad_clip
        self.scaler = DynamicLossScaler() if self.precision == "fp16" else None
        self.module = model.to(self.dist.device)
        self.model = self.wrap(self.module)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = build(OPTIMIZERS, optimizer_cfg, "optimizer", params=params)

    def wrap(self, module: nn.Module) -> nn.Module:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        scale = self.scaler.scale if self.scaler else 1.0
        (loss * (scale / self.accum)).backward()

    def local_grads(self) -> list[torch.Tensor]:
        """This rank's gradient tensors (plain tensors, shards under FSDP)."""
        return [p.grad for p in self.module.parameters() if p.grad is not None]

    def grad_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Global L2 norm of the gradient (DDP grads are already identical on every rank)."""
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())

    def step(self, loss_finite: torch.Tensor) -> tuple[torch.Tensor, str]:
        grads = self.local_grads()
        if self.scaler:
            torch._foreach_mul_(grads, 1.0 / self.scaler.scale)
        grad_norm = self.grad_norm(grads)
        # One host sync per optimizer step: skipping a non-finite step needs a decision on the host.
        finite_loss, finite_grad = (bool(v) for v in torch.stack([loss_finite, grad_norm.isfinite()]).tolist())
        if finite_loss and finite_grad:
            if self.grad_clip is not None:
                coef = (self.grad_clip / (grad_norm + 1e-6)).clamp(max=1.0)
                torch._foreach_mul_(grads, coef)
            self.optimizer.step()
            status = STEP_OK
        else:
            status = STEP_OVERFLOW if (self.scaler and finite_loss) else STEP_NONFINITE
        if self.scaler:
            self.scaler.update(overflow=status != STEP_OK)
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, status

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
