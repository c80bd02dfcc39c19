"""The Strategy protocol: how the parts of a run are wrapped, stepped, saved and gathered, keyed by part name.
One file per strategy.

The trainer talks to every strategy through these methods only. Tensors that mirror a part's parameters (the
EMA copies) are handed over as `{part: {key: {param name: local tensor}}}` so they are sharded, saved and
gathered exactly like the parameters they follow. A phase (diffusion/base.py) names the parts it updates:
gradients are synchronised, clipped and stepped for those parts only.
"""

import contextlib
import logging
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from diffscale.engine.parts import Part, param_groups
from diffscale.engine.precision import DynamicLossScaler
from diffscale.registry import OPTIMIZERS, build
from diffscale.utils.dist import DistInfo

log = logging.getLogger("diffscale")
Mirrors = dict[str, dict[str, dict[str, torch.Tensor]]]  # {part: {'<hook>/<average>': {param: local tensor}}}
PostStep = Callable[[nn.Module], object]


class StepStatus(str, Enum):
    """The outcome of one phase's optimizer step (a str, so it logs and compares as its value)."""

    OK = "ok"
    OVERFLOW = "overflow"  # fp16 loss scale too high: skipped, the scale halves
    NONFINITE = "nonfinite"  # a non-finite loss or gradient: skipped and counted


class Strategy:
    """Interface and the part bookkeeping every strategy shares. `module(part)` is the bare nn.Module;
    `models(update)` what the objective calls forward on: the wrapped module for the parts being updated, the
    bare one (no gradient sync machinery) for the others."""

    name = "base"

    def __init__(self, dist_info: DistInfo, precision: str):
        self.dist, self.precision = dist_info, precision
        self.parts: dict[str, Part] = {}
        self.modules: dict[str, nn.Module] = {}
        self.wrapped: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._post_steps: dict[str, list[PostStep]] = {}
        self._prepared = False

    # ------------------------------------------------------------------ set-up
    def post_step(self, part: str, fn: PostStep) -> None:
        """Run `fn(module)` on the weights the optimizer of `part` updates: once before the first forward, then
        after each successful step (EDM2's forced weight normalisation). Register before `prepare`."""
        if self._prepared:
            raise RuntimeError("Strategy.post_step: register post-step functions before prepare()")
        self._post_steps.setdefault(part, []).append(fn)

    def prepare(self, parts: dict[str, Part], batch_gpu: int, accum: int) -> None:
        """Move, wrap or shard every part and build the optimizers of the trainable ones."""
        self.parts, self.accum, self.batch_gpu = parts, accum, batch_gpu
        with torch.no_grad():  # on the plain modules, before wrapping: exact under every strategy
            for name, fns in self._post_steps.items():
                for fn in fns:
                    fn(parts[name].module)
        self._prepared = True
        self._prepare()

    def _prepare(self) -> None:
        raise NotImplementedError

    def build_optimizer(self, part: Part) -> torch.optim.Optimizer:
        groups, cfg = param_groups(part.module, part.optimizer_cfg, f"{part.key}optimizer")
        return build(OPTIMIZERS, cfg, f"{part.key}optimizer", params=groups)

    @property
    def trainable(self) -> list[str]:
        return [n for n, p in self.parts.items() if p.trainable]

    # ------------------------------------------------------------------ the step
    def module(self, part: str) -> nn.Module:
        return self.modules[part]

    def models(self, update: tuple[str, ...] = ()) -> dict[str, nn.Module]:
        return {n: self.wrapped[n] if n in update else self.modules[n] for n in self.parts}

    def micro_step_context(self, update: tuple[str, ...], is_last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward and backward of a phase; gradient sync only on the last."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, update: tuple[str, ...]) -> None:
        raise NotImplementedError

    def step(self, update: tuple[str, ...], loss_finite: torch.Tensor) -> tuple[dict[str, torch.Tensor], StepStatus]:
        """Clip, check, step and zero the grads of the parts `update`. One host sync. Returns ({part: global
        gradient norm}, status): a non-finite loss or gradient of any of them skips the whole phase."""
        raise NotImplementedError

    def set_lr(self, part: str, lr: float) -> None:
        """Set the scheduled lr of `part`; each parameter group gets lr times its `lr_mult`."""
        for group in self._param_groups(part):
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def _param_groups(self, part: str) -> list[dict]:
        return self.optimizers[part].param_groups

    # ------------------------------------------------------------------ weights and checkpoints
    def param_tensors(self, part: str) -> dict[str, torch.Tensor]:
        """This rank's piece of every trainable parameter of `part` (the full tensor where not sharded)."""
        raise NotImplementedError

    def gather_full(self, part: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Full CPU tensors of `part`'s parameter-shaped `tensors` on rank 0 (None elsewhere). Collective."""
        raise NotImplementedError

    def full_state(self, part: str) -> dict[str, torch.Tensor] | None:
        """The consolidated state_dict of `part` on rank 0 (None elsewhere). Collective."""
        raise NotImplementedError

    def save(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        """Write every part (weights, optimizer) and the mirrors into `ckpt_dir`. Collective."""
        raise NotImplementedError

    def load(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        """Restore every part and fill `mirrors` (this rank's pieces) in place. Collective."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Small strategy state kept by the trainer (e.g. the loss scale)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TorchStrategy(Strategy):
    """What DDP and FSDP2 share: our own accumulation, loss scaling, clipping and non-finite check."""

    def _prepare(self) -> None:
        self.scaler = DynamicLossScaler() if self.precision == "fp16" else None
        for name, part in self.parts.items():
            module = part.module.to(self.dist.device)
            self.modules[name] = module
            self.wrapped[name] = self.wrap(module, part)
            if part.trainable:
                self.optimizers[name] = self.build_optimizer(part)

    def wrap(self, module: nn.Module, part: Part) -> nn.Module:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, update: tuple[str, ...]) -> None:
        scale = self.scaler.scale if self.scaler else 1.0
        (loss * (scale / self.accum)).backward()

    def local_grads(self, part: str) -> list[torch.Tensor]:
        """This rank's gradient tensors of `part` (plain tensors, shards under FSDP)."""
        return [p.grad for p in self.modules[part].parameters() if p.grad is not None]

    def grad_norms(self, grads: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """[len(grads)] global L2 norms of each part's gradient (DDP grads are identical on every rank)."""
        return torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g)).float()) if g
                            else torch.zeros((), device=self.dist.device) for g in grads.values()])

    def step(self, update: tuple[str, ...], loss_finite: torch.Tensor) -> tuple[dict[str, torch.Tensor], StepStatus]:
        grads = {name: self.local_grads(name) for name in update}
        if self.scaler:
            for g in grads.values():
                torch._foreach_mul_(g, 1.0 / self.scaler.scale)
        norms = self.grad_norms(grads)
        # One host sync per phase: skipping a non-finite step needs a decision on the host.
        finite = torch.cat([loss_finite.reshape(1), norms.isfinite()]).tolist()
        finite_loss, finite_grad = bool(finite[0]), all(finite[1:])
        if finite_loss and finite_grad:
            for i, name in enumerate(update):
                clip = self.parts[name].grad_clip
                if clip is not None:
                    torch._foreach_mul_(grads[name], (clip / (norms[i] + 1e-6)).clamp(max=1.0))
                self.optimizers[name].step()
            with torch.no_grad():
                for name in update:
                    for fn in self._post_steps.get(name, ()):
                        fn(self.modules[name])
            status = StepStatus.OK
        else:
            status = StepStatus.OVERFLOW if (self.scaler and finite_loss) else StepStatus.NONFINITE
        if self.scaler:
            self.scaler.update(overflow=status != StepStatus.OK)
        for name in update:
            self.optimizers[name].zero_grad(set_to_none=True)
        return {name: norms[i] for i, name in enumerate(update)}, status

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
