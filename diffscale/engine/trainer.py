"""The training loop. Read it top to bottom: build, resume, then for each step: micro-batches (hooks may
change each batch), backward, one optimizer step through the strategy, hooks, checkpoint.

The trainer owns the loop and nothing else: distribution is the strategy's, data the loader's,
the loss the objective's, everything optional a hook's.
"""

import logging
import shutil
import signal
import time
from pathlib import Path

import torch
from mmengine.config import Config
from torch.utils.tensorboard import SummaryWriter

from diffscale import config as C
from diffscale.engine import checkpoint as ckpt
from diffscale.engine.hooks.base import Hook
from diffscale.engine.hooks.checkpoint import CheckpointHook
from diffscale.engine.hooks.logger import LoggerHook
from diffscale.engine.precision import autocast
from diffscale.engine.strategies.base import STEP_NONFINITE, STEP_OK, Strategy
from diffscale.registry import DATASETS, HOOKS, LR_SCHEDULES, MODELS, OBJECTIVES, STRATEGIES, build
from diffscale.utils.dist import DistInfo, all_reduce_sum, barrier, broadcast_object
from diffscale.utils.logging import setup_logging
from diffscale.utils.seeding import load_rng_state, rng_state, seed_everything

log = logging.getLogger("diffscale")


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: Config, dist_info: DistInfo, resume: str | None = None):
        self.cfg, self.dist, self.resume = cfg, dist_info, resume
        tc = cfg.train_cfg
        self.max_iters, self.batch_size, self.batch_gpu = tc.max_iters, tc.batch_size, tc.batch_gpu
        self.precision, self.grad_clip = tc.precision, tc.get("grad_clip")
        self.max_nonfinite_steps = tc.get("max_nonfinite_steps", 10)
        # Validate the batch arithmetic before anything expensive is built.
        self.accum = C.batch_arithmetic(self.batch_size, self.batch_gpu, dist_info.world_size)
        self.work_dir = Path(cfg.work_dir).resolve()
        self.step, self.nimg = 0, 0  # optimizer steps done, images consumed (global)
        self.skipped_steps, self.nonfinite_in_a_row = 0, 0
        self.stop_requested = False

        if dist_info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        setup_logging(self.work_dir, dist_info.is_main)
        self.writer = SummaryWriter(str(self.work_dir / "tensorboard")) if dist_info.is_main else None
        if dist_info.is_main:
            C.dump(cfg, self.work_dir / "config.py")

        # Same seed on every rank: identical initial weights without a broadcast.
        seed_everything(tc.seed)
        model = build(MODELS, cfg.model, "model")
        self.num_params = sum(p.numel() for p in model.parameters())
        self.model_name = type(model).__name__
        self.objective = build(OBJECTIVES, cfg.objective, "objective")
        self.loader = build(DATASETS, cfg.data.train, "data.train", batch_gpu=self.batch_gpu,
                            rank=dist_info.rank, world_size=dist_info.world_size, seed=tc.seed,
                            device=dist_info.device)
        self.lr_schedule = build(LR_SCHEDULES, cfg.lr_schedule, "lr_schedule", max_iters=self.max_iters)
        self.base_lr = float(cfg.optimizer.get("lr", 1e-3))
        strategy_cfg = dict(cfg.strategy)
        self.strategy: Strategy = build(STRATEGIES, strategy_cfg, "strategy", dist_info=dist_info,
                                        precision=self.precision)
        self.strategy.prepare(model, dict(cfg.optimizer), self.batch_gpu, self.accum, self.grad_clip)
        # EDM2's forced weight normalisation after each optimizer step, on the weights the optimizer updates
        # (plain, DDP, FSDP2 shards). DeepSpeed keeps them inside its optimizer, out of reach (models/layers/mp.py).
        self.force_weight_norm = (getattr(self.strategy.module, "force_weight_norm_", None)
                                  if self.strategy.name != "deepspeed" else None)
        if self.force_weight_norm is not None:
            # Take over from the model's in-forward pass before any forward, so that a resumed run normalises
            # exactly as often as an uninterrupted one (the normalisation is not idempotent: eps).
            with torch.no_grad():
                self.force_weight_norm()
        # Noise (sigma, n) comes from a per-rank generator whose state is checkpointed.
        self.generator = torch.Generator(dist_info.device).manual_seed(tc.seed * 1000 + dist_info.rank)
        # The checkpoint hook runs last, so a checkpoint holds every hook's update of that step.
        self.hooks: list[Hook] = [
            LoggerHook(interval=tc.get("log_interval", 10)),
            *(build(HOOKS, h, f"hooks.{i}") for i, h in enumerate(cfg.hooks)),
            CheckpointHook(**cfg.checkpoint),
        ]

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        self._banner()
        for hook in self.hooks:
            hook.before_run(self)
        self._resume()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while self.step < self.max_iters:
                metrics = self._train_step()
                for hook in self.hooks:
                    hook.after_step(metrics)
                if metrics["stop"]:
                    log.info("SIGTERM: saving a checkpoint at step %d and exiting", self.step)
                    self.save_checkpoint(keep=self.cfg.checkpoint.keep)
                    break
        finally:
            signal.signal(signal.SIGTERM, previous)
        for hook in self.hooks:
            hook.after_run()
        if self.writer:
            self.writer.close()

    def _train_step(self) -> dict:
        lr = self.base_lr * self.lr_schedule.factor(self.step)
        self.strategy.set_lr(lr)
        loss_sum = torch.zeros((), device=self.dist.device)
        for micro in range(self.accum):
            batch = next(self.loader)
            for hook in self.hooks:
                batch = hook.before_step(batch)
            with self.strategy.micro_step_context(is_last=micro == self.accum - 1):
                with autocast(self.precision, self.dist.device):
                    loss = self.objective(self.strategy.model, batch, self.generator).mean()
                self.strategy.backward(loss)
            loss_sum += loss.detach().float()
        # One collective per step: the global mean loss and whether any rank was asked to stop.
        stats = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(self.stop_requested),
                                                                   device=self.dist.device)]))
        mean_loss = stats[0] / (self.accum * self.dist.world_size)
        # Queue the stop flag's copy to the host now: the strategy's one sync below (the finite check)
        # completes it, so reading it afterwards costs no second sync.
        stop_flag = stats[1].to("cpu", non_blocking=True)
        grad_norm, status = self.strategy.step(loss_finite=mean_loss.isfinite())
        if self.force_weight_norm is not None and status == STEP_OK:
            with torch.no_grad():
                self.force_weight_norm()
        self.step += 1
        self.nimg += self.batch_size
        self._count(status)
        return {"loss": mean_loss, "grad_norm": grad_norm, "lr": lr, "status": status,
                "stop": bool(stop_flag > 0)}

    def _count(self, status: str) -> None:
        if status == STEP_OK:
            self.nonfinite_in_a_row = 0
            return
        self.skipped_steps += 1
        if status == STEP_NONFINITE:
            self.nonfinite_in_a_row += 1
            if self.dist.is_main:  # the decision is global: say it once
                log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                            self.step, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_a_row} non-finite steps in a row at step {self.step} "
                    f"(train_cfg.max_nonfinite_steps={self.max_nonfinite_steps}): lower the learning rate, "
                    f"check the data, or resume from {self.work_dir / ckpt.LAST}")

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stop_requested = True  # finish this step, save, exit 0 (see train)

    # ------------------------------------------------------------------ checkpoints
    def _mirrors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {f"{i}/{k}": v for i, h in enumerate(self.hooks) for k, v in h.param_mirrors.items()}

    def save_checkpoint(self, keep: int) -> Path:
        final = ckpt.checkpoint_dir(self.work_dir, self.step)
        tmp = ckpt.temp_dir(final)
        t0 = time.perf_counter()
        if self.dist.is_main:
            if tmp.exists():  # left by a run killed mid-save
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        self.strategy.save(tmp, self._mirrors())
        ckpt.save_file({"rng": rng_state(self.generator), "loader": self.loader.state_dict()},
                       tmp / f"rank_{self.dist.rank:05d}.pt")
        if self.dist.is_main:
            ckpt.save_file({
                "step": self.step, "nimg": self.nimg, "skipped_steps": self.skipped_steps,
                "world_size": self.dist.world_size, "strategy": self.strategy.state_dict(),
                "hooks": {str(i): h.state_dict() for i, h in enumerate(self.hooks)},
            }, tmp / "trainer.pt")
        barrier()
        if self.dist.is_main:
            ckpt.finalize(tmp, final, self.work_dir, keep)
            log.info("saved %s (%.2f s)", final, time.perf_counter() - t0)
        barrier()
        return final

    def _resume(self) -> None:
        if self.resume is None:
            return
        path = ckpt.resolve_resume(self.work_dir, self.resume) if self.dist.is_main else None
        path = broadcast_object(path)
        if path is None:
            log.info("no complete checkpoint in %s: starting from scratch", self.work_dir)
            return
        self.strategy.load(path, self._mirrors())
        state = ckpt.load_file(path / "trainer.pt")
        self.step, self.nimg, self.skipped_steps = state["step"], state["nimg"], state["skipped_steps"]
        self.strategy.load_state_dict(state["strategy"])
        for i, hook in enumerate(self.hooks):
            hook.load_state_dict(state["hooks"].get(str(i), {}))
        rank_file = path / f"rank_{self.dist.rank:05d}.pt"
        if state["world_size"] == self.dist.world_size:
            rank_state = ckpt.load_file(rank_file)
            load_rng_state(rank_state["rng"], self.generator)
            self.loader.load_state_dict(rank_state["loader"])
        else:  # resharded resume: weights carry over exactly; data order and noise restart per rank
            log.warning("resuming a %d-rank checkpoint on %d ranks: data order and noise are not replayed",
                        state["world_size"], self.dist.world_size)
        log.info("resumed from %s at step %d", path, self.step)

    def _banner(self) -> None:
        log.info(
            "diffscale: world size %d, device %s, strategy %s, precision %s | batch %d = batch_gpu %d x accum %d "
            "x world %d | %s parameters: %.3fM | work_dir %s",
            self.dist.world_size, self.dist.device, self.strategy.name, self.precision, self.batch_size,
            self.batch_gpu, self.accum, self.dist.world_size, self.model_name,
            self.num_params / 1e6, self.work_dir)

    # ------------------------------------------------------------------ consolidated weights
    def consolidated_state(self, ema: str | None) -> dict[str, torch.Tensor] | None:
        """Full model state_dict on rank 0 (None elsewhere), with the parameters of the average `ema`
        (a key of an EMAHook's averages) substituted when given. Collective."""
        state = self.strategy.full_model_state()
        if ema is None:
            return state
        mirrors = {k.split("/", 1)[1]: v for k, v in self._mirrors().items()}
        if ema not in mirrors:
            raise KeyError(f"no average named '{ema}'; have: {sorted(mirrors)}")
        full = self.strategy.gather_full(mirrors[ema])
        if state is not None:
            state.update(full)
        return state
