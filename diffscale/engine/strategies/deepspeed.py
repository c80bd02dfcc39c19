"""DeepSpeed ZeRO stage 1, 2 or 3: one engine per trainable part (as DeepSpeed-Chat builds one per trained model),
each with its own optimizer, precision handling and checkpoint.

DeepSpeed divides the loss by the accumulation rounds itself and skips a step whose gradient norm is not finite
(ZeRO 1-3, fp32 and bf16 as well as fp16), so the trainer only reads the outcome. An engine owns its backward,
so under DeepSpeed a phase updates one part.

Frozen parts are not engines: they stay replicated on every rank in the run's precision (bf16 / fp16: 2 bytes per
parameter per rank, fp32: 4), in eval mode, outside every optimizer. Sharding them under ZeRO-3 would save that
memory on large teachers at the price of an all-gather per forward; at the sizes we distil (a 56M-parameter EDM
teacher is 112 MB in bf16) replication is the faster choice.

Post-step functions (EDM2's forced weight normalisation) run once before the engines are built; after each step
they cannot reach the fp32 weights, which ZeRO keeps inside its optimizer (flattened, partitioned), so under
DeepSpeed EDM2 trains with traditional weight normalisation only.
"""

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist

from diffscale.engine.checkpoint import load_file, save_file
from diffscale.engine.precision import DTYPES
from diffscale.engine.safe_load import guard_engine
from diffscale.engine.strategies.base import Mirrors, StepStatus, Strategy, log
from diffscale.errors import ConfigError
from diffscale.registry import STRATEGIES
from diffscale.utils.dist import barrier

DS_TAG = "state"


@STRATEGIES.register_module(name="deepspeed")
class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, dist_info, precision: str, zero_stage: int = 2, config: dict | None = None, **_ignored):
        super().__init__(dist_info, precision)
        self.zero_stage, self.extra_config = zero_stage, config or {}
        self.is_last = True

    def _prepare(self) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        if self.precision == "fp16" and not get_accelerator().is_fp16_supported():
            raise ConfigError(f"train_cfg.precision: DeepSpeed does not support fp16 on this device "
                              f"({get_accelerator().device_name()}); use bf16 or fp32")
        if any(self._post_steps.get(n) for n in self.trainable):
            log.info("deepspeed: post-step functions (forced weight normalisation) ran once before the engines; "
                     "ZeRO keeps the fp32 weights inside its optimizer, so they do not run after each step")
        for name, part in self.parts.items():
            module = part.module.to(self.dist.device)
            self.modules[name] = module
            if not part.trainable:  # replicated, parameters in the run's precision (module docstring); buffers
                # (fixed Fourier frequencies) keep theirs, so the frozen function is the one that was trained
                for p in module.parameters():
                    p.data = p.data.to(DTYPES[self.precision])
                self.wrapped[name] = module
                continue
            config = {
                "train_batch_size": self.batch_gpu * self.accum * self.dist.world_size,
                "train_micro_batch_size_per_gpu": self.batch_gpu,
                "gradient_accumulation_steps": self.accum,
                "gradient_clipping": part.grad_clip or 0.0,
                "zero_optimization": {"stage": self.zero_stage},
                "bf16": {"enabled": self.precision == "bf16"},
                "fp16": {"enabled": self.precision == "fp16", "initial_scale_power": 16},
                "zero_allow_untested_optimizer": True,
                "steps_per_print": 1 << 30,  # the trainer logs; keep DeepSpeed quiet
                **self.extra_config,
            }
            optimizer = self.build_optimizer(part)
            engine, self.optimizers[name], _, _ = deepspeed.initialize(
                model=module, optimizer=optimizer, config=config, dist_init_required=False)
            guard_engine(engine)  # its checkpoint files load with weights_only=True (engine/safe_load.py)
            self.wrapped[name] = engine

    def _param_groups(self, part: str) -> list[dict]:
        return self.wrapped[part].optimizer.param_groups

    def _engine(self, update: tuple[str, ...]):
        if len(update) != 1:
            raise ConfigError(f"strategy.type=deepspeed: a phase updates exactly one part (an engine owns its "
                              f"backward); this one updates {list(update)}")
        return self.wrapped[update[0]]

    def micro_step_context(self, update: tuple[str, ...], is_last: bool) -> contextlib.AbstractContextManager:
        self.is_last = is_last
        return contextlib.nullcontext()  # DeepSpeed decides when to reduce from its micro-step count

    def backward(self, loss: torch.Tensor, update: tuple[str, ...]) -> None:
        engine = self._engine(update)
        engine.backward(loss)  # DeepSpeed scales by 1 / accumulation rounds
        if not self.is_last:
            engine.step()  # not a boundary: DeepSpeed only counts the micro-step

    def step(self, update: tuple[str, ...], loss_finite: torch.Tensor) -> tuple[dict[str, torch.Tensor], StepStatus]:
        engine = self._engine(update)
        engine.step()  # the boundary: reduce, clip, check, step, zero
        skipped = bool(getattr(engine.optimizer, "overflow", False))
        norm = engine.get_global_grad_norm()
        grad_norm = torch.tensor(float("nan") if norm is None else float(norm))
        finite_loss = bool(loss_finite.item())  # the phase's host sync (the trainer relies on one)
        if not skipped:
            return {update[0]: grad_norm}, StepStatus.OK
        status = StepStatus.OVERFLOW if (self.precision == "fp16" and finite_loss) else StepStatus.NONFINITE
        return {update[0]: grad_norm}, status

    # ------------------------------------------------------------------ weights and checkpoints
    def _sharded(self, part: str) -> bool:
        return self.zero_stage == 3 and self.parts[part].trainable

    def param_tensors(self, part: str) -> dict[str, torch.Tensor]:
        named = self.modules[part].named_parameters()
        if self._sharded(part):  # this rank's flat partition of each parameter
            return {n: p.ds_tensor.detach() for n, p in named if p.requires_grad}
        return {n: p.detach() for n, p in named if p.requires_grad}

    def gather_full(self, part: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if not self._sharded(part):
            return {n: t.detach().cpu().clone() for n, t in tensors.items()} if self.dist.is_main else None
        params, full = dict(self.modules[part].named_parameters()), {}
        for name, local in tensors.items():
            pieces = [torch.empty_like(local) for _ in range(self.dist.world_size)]
            dist.all_gather(pieces, local.contiguous())
            p = params[name]
            full[name] = torch.cat(pieces)[: p.ds_numel].view(p.ds_shape).cpu()
        return full if self.dist.is_main else None

    def _partition(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a full tensor, in ZeRO-3's layout: flat, padded, chunk `rank`."""
        size = like.numel()
        flat = torch.zeros(size * self.dist.world_size, dtype=full.dtype)
        flat[: full.numel()] = full.flatten()
        return flat[self.dist.rank * size: (self.dist.rank + 1) * size]

    def full_state(self, part: str) -> dict[str, torch.Tensor] | None:
        module = self.modules[part]
        gathered = contextlib.nullcontext()
        if self._sharded(part):
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        with gathered:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} \
                if self.dist.is_main else None

    def save(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        for name in self.trainable:
            self.wrapped[name].save_checkpoint(str(ckpt_dir / "ds" / name), tag=DS_TAG, save_latest=False)
        full = {name: {key: self.gather_full(name, tensors) for key, tensors in by_key.items()}
                for name, by_key in mirrors.items()}
        if self.dist.is_main:
            save_file(full, ckpt_dir / "mirrors.pt")
            for name, part in self.parts.items():
                if not part.trainable:  # replicated: rank 0 writes it, in fp32 like every export
                    state = {k: v.float() if v.is_floating_point() else v
                             for k, v in self.modules[name].state_dict().items()}
                    save_file({"model": state}, ckpt_dir / f"{name}.pt")
        barrier()

    def load(self, ckpt_dir: Path, mirrors: Mirrors) -> None:
        for name in self.trainable:
            self.wrapped[name].load_checkpoint(str(ckpt_dir / "ds" / name), tag=DS_TAG, load_optimizer_states=True,
                                               load_lr_scheduler_states=False)
        for name, part in self.parts.items():
            if not part.trainable:
                self.modules[name].load_state_dict(load_file(ckpt_dir / f"{name}.pt")["model"])
        full = load_file(ckpt_dir / "mirrors.pt")
        for name, by_key in mirrors.items():
            for key, tensors in by_key.items():
                for param, tensor in tensors.items():
                    src = full[name][key][param]
                    if self._sharded(name):
                        src = self._partition(src, tensor)
                    tensor.copy_(src.to(tensor.device))
