"""The training loop. Read it top to bottom: build the parts, resume, then for each iteration: draw the
accumulation micro-batches (hooks may change each), run each update phase of the objective (forward and backward
of its parts, one collective, one host sync, per-part clipping, the non-finite check and the step), hooks,
checkpoint.

The trainer owns the loop and nothing else: distribution is the strategy's, data the loader's, the losses and
phases the objective's, everything optional a hook's.
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
from diffscale.diffusion.base import Phase
from diffscale.engine import checkpoint as ckpt
from diffscale.engine.hooks.base import Hook
from diffscale.engine.hooks.checkpoint import CheckpointHook
from diffscale.engine.hooks.logger import LoggerHook
from diffscale.engine.parts import Part, base_lr, build_part, count_params
from diffscale.engine.precision import autocast
from diffscale.engine.strategies.base import Mirrors, StepStatus, Strategy
from diffscale.engine.work_dir_lock import WorkDirBusy, WorkDirLock
from diffscale.errors import ConfigError
from diffscale.registry import DATASETS, HOOKS, LR_SCHEDULES, OBJECTIVES, STRATEGIES, build
from diffscale.utils.dist import DistInfo, all_reduce_sum, barrier, broadcast_object
from diffscale.utils.logging import setup_logging
from diffscale.utils.seeding import load_rng_state, rng_state, seed_everything

log = logging.getLogger("diffscale")


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: Config, dist_info: DistInfo, resume: str | None = None):
        self.cfg, self.dist, self.resume = cfg, dist_info, resume
        tc = cfg.train_cfg  # defaults filled in by config.validate (TRAIN_DEFAULTS)
        self.max_iters, self.batch_size, self.precision = tc.max_iters, tc.batch_size, tc.precision
        self.max_nonfinite_steps = tc.max_nonfinite_steps
        # Validate the batch arithmetic before anything expensive is built; batch_gpu is the largest micro-batch.
        self.batch_gpu, self.accum = C.batch_arithmetic(self.batch_size, tc.batch_gpu, dist_info.world_size)
        self.work_dir = Path(cfg.work_dir).resolve()
        self.step, self.nimg = 0, 0  # iterations done, images consumed (global)
        self.skipped_steps, self.nonfinite_in_a_row = 0, 0
        self.stop_requested = False

        self.lock = WorkDirLock(self.work_dir) if dist_info.is_main else None
        busy = None
        if dist_info.is_main:  # before anything is written into the work_dir (engine/work_dir_lock.py)
            try:
                self.lock.acquire()
            except WorkDirBusy as exc:
                busy = str(exc)
        busy = broadcast_object(busy)
        if busy:
            raise WorkDirBusy(busy)
        try:
            self._build(cfg, dist_info)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give the work_dir lock back (rank 0; idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self, cfg: Config, dist_info: DistInfo) -> None:
        tc = cfg.train_cfg
        setup_logging(self.work_dir, dist_info.is_main)
        self.writer = SummaryWriter(str(self.work_dir / "tensorboard")) if dist_info.is_main else None
        if dist_info.is_main:
            C.dump(cfg, self.work_dir / "config.py")

        # Same seed on every rank: identical initial weights without a broadcast.
        seed_everything(tc.seed)
        prefix = "parts.{}." if "parts" in cfg else ""
        self.parts: dict[str, Part] = {name: build_part(name, spec, prefix.format(name))
                                       for name, spec in C.part_specs(cfg).items()}
        # Named and counted before any strategy wraps them (FSDP2 renames the class): {part: (class, all, trainable)}.
        self.part_summary = {name: (type(part.module).__name__, *count_params(part.module))
                             for name, part in self.parts.items()}
        self.objective = build(OBJECTIVES, cfg.objective, "objective")
        follows = getattr(self.objective, "follows", None)  # {frozen part: trainable part it should track}
        if follows:  # nothing here would move those parts: refuse rather than train against a fixed copy
            raise ConfigError(f"objective: {type(self.objective).__name__} asks for the frozen part(s) "
                              f"{sorted(follows)} to follow {sorted(set(follows.values()))} after every step, which "
                              f"this trainer does not do yet (ConsistencyDistillationLoss: use target_decay=0, the "
                              f"CIFAR-10 recipe's stop-gradient target)")
        missing = [p for p in self.objective.parts if p not in self.parts]
        if missing:
            raise ConfigError(f"objective: {type(self.objective).__name__} needs the parts "
                              f"{list(self.objective.parts)}; the config has {list(self.parts)} (missing {missing})")
        self.loader = build(DATASETS, cfg.data.train, "data.train", batch_gpu=self.batch_gpu,
                            rank=dist_info.rank, world_size=dist_info.world_size, seed=tc.seed,
                            device=dist_info.device)
        trainable = [n for n, p in self.parts.items() if p.trainable]
        self.lr_schedules = {n: build(LR_SCHEDULES, self.parts[n].lr_schedule_cfg, f"{prefix.format(n)}lr_schedule",
                                      max_iters=self.max_iters) for n in trainable}
        self.base_lrs = {n: base_lr(self.parts[n].optimizer_cfg) for n in trainable}
        self.part_steps = dict.fromkeys(trainable, 0)  # optimizer steps of each part (EMA counts these)
        self.strategy: Strategy = build(STRATEGIES, dict(cfg.strategy), "strategy", dist_info=dist_info,
                                        precision=self.precision)
        for name in trainable:
            module = self.parts[name].module
            if hasattr(module, "force_weight_norm_"):  # EDM2: forced weight normalisation after each step
                self.strategy.post_step(name, type(module).force_weight_norm_)
        self.strategy.prepare(self.parts, self.batch_gpu, self.accum)
        # Noise comes from a per-rank generator whose state is checkpointed.
        self.generator = torch.Generator(dist_info.device).manual_seed(tc.seed * 1000 + dist_info.rank)
        # The checkpoint hook runs last, so a checkpoint holds every hook's update of that step.
        self.hooks: list[Hook] = [LoggerHook(interval=tc.log_interval),
                                  *(self._build_hook(h, i) for i, h in enumerate(cfg.hooks)),
                                  CheckpointHook(**cfg.checkpoint)]
        names = [h.name for h in self.hooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"hooks: two hooks named {dupes[0]}; give one of them name='...'")
        self.checkpoint_requested = False  # a hook (EvalHook keeping best/) asks for a checkpoint of this step

    @staticmethod
    def _build_hook(cfg: dict, index: int) -> Hook:
        cfg = dict(cfg)
        name = cfg.pop("name", None)
        hook = build(HOOKS, cfg, f"hooks.{index}")
        if name is not None:
            hook.name = name
        return hook

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        try:
            self._train()
        finally:
            self.release()

    def _train(self) -> None:
        self._banner()
        for hook in self.hooks:
            hook.before_run(self)
        self._resume()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        interrupted = False
        try:
            while self.step < self.max_iters:
                metrics = self._train_step()
                for hook in self.hooks:
                    hook.after_step(metrics)
                if metrics["stop"]:
                    log.info("SIGTERM: saving a checkpoint at step %d and exiting", self.step)
                    self.save_checkpoint(keep=self.cfg.checkpoint.keep)
                    interrupted = True
                    break
        finally:
            signal.signal(signal.SIGTERM, previous)
        for hook in self.hooks:  # after a SIGTERM save, only the cheap part: a cluster's grace period is ~30 s
            hook.after_interrupt() if interrupted else hook.after_run()
        if self.writer:
            self.writer.close()

    def _next_batch(self) -> dict:
        batch = next(self.loader)
        for hook in self.hooks:
            batch = hook.before_step(batch)
        return batch

    def _train_step(self) -> dict:
        batches = [self._next_batch() for _ in range(self.accum)]
        # The stop flag rides on the first collective of the iteration (a rank may be asked to stop alone).
        stop_flag = torch.tensor(float(self.stop_requested), device=self.dist.device)
        phases, stepped, lrs, stop = {}, {}, {}, None
        for phase in self.objective.phases(self.step):
            result = self._run_phase(phase, batches, stop_flag if stop is None else None)
            stop = result["stop"] if stop is None else stop
            phases[phase.name] = result
            stepped.update(dict.fromkeys(phase.parts, result["status"]))
            lrs.update(result["lrs"])
        if stop is None:  # an iteration without phases still agrees on stopping
            stop = all_reduce_sum(stop_flag).cpu()
        self.step += 1
        self.nimg += self.batch_size
        first = next(iter(phases.values()), {})
        return {"phases": phases, "stepped": stepped, "lrs": lrs, "loss": first.get("loss"),
                "grad_norm": first.get("grad_norm"), "lr": next(iter(lrs.values()), 0.0),
                "status": first.get("status", StepStatus.OK), "stop": bool(stop > 0)}

    def _run_phase(self, phase: Phase, batches: list[dict], stop_flag: torch.Tensor | None) -> dict:
        """Forward and backward of every micro-batch for the parts `phase.parts`, then their optimizer step."""
        lrs = {}
        for name in phase.parts:
            lrs[name] = self.base_lrs[name] * self.lr_schedules[name].factor(self.step)
            self.strategy.set_lr(name, lrs[name])
        models = self.strategy.models(phase.parts)
        loss_sum = torch.zeros((), device=self.dist.device)
        log_sums: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(batches):
            with self.strategy.micro_step_context(phase.parts, is_last=micro == self.accum - 1):
                with autocast(self.precision, self.dist.device):
                    out = self.objective(phase, models, batch, self.generator)
                    loss = out.loss.mean()
                self.strategy.backward(loss, phase.parts)
            loss_sum += loss.detach().float()
            for key, value in out.logs.items():
                log_sums[key] = log_sums.get(key, 0.0) + value.detach().float()
        # One collective per phase: the global mean loss, the objective's logs and (first phase) the stop flag.
        extra = [] if stop_flag is None else [stop_flag]
        stats = all_reduce_sum(torch.stack([loss_sum, *log_sums.values(), *extra]))
        count = self.accum * self.dist.world_size
        mean_loss = stats[0] / count
        logs = {k: stats[1 + i] / count for i, k in enumerate(log_sums)}
        # Queue the stop flag's copy to the host now: the strategy's one sync below (the finite check) completes
        # it, so reading it afterwards costs no second sync.
        stop = stats[-1].to("cpu", non_blocking=True) if stop_flag is not None else None
        grad_norms, status = self.strategy.step(phase.parts, loss_finite=mean_loss.isfinite())
        for name in phase.parts:
            self.part_steps[name] += 1
        self._count(status)
        self.objective.after_step(phase, out)
        return {"loss": mean_loss, "logs": logs, "grad_norms": grad_norms, "status": status, "lrs": lrs,
                "grad_norm": next(iter(grad_norms.values())), "stop": stop}

    def _count(self, status: StepStatus) -> None:
        """Count a phase's outcome; called before the iteration counter moves, so the step it names is step + 1."""
        if status == StepStatus.OK:
            self.nonfinite_in_a_row = 0
            return
        step = self.step + 1
        self.skipped_steps += 1
        if status == StepStatus.NONFINITE:
            self.nonfinite_in_a_row += 1
            if self.dist.is_main:  # the decision is global: say it once
                log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                            step, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
                newest = ckpt.newest_complete(self.work_dir)
                resume = f"or resume from {newest}" if newest else "(no checkpoint was saved yet)"
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_a_row} non-finite steps in a row at step {step} "
                    f"(train_cfg.max_nonfinite_steps={self.max_nonfinite_steps}): lower the learning rate, "
                    f"check the data, {resume}")

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stop_requested = True  # finish this step, save, exit 0 (see train)

    # ------------------------------------------------------------------ checkpoints
    def _mirrors(self) -> Mirrors:
        mirrors: Mirrors = {}
        for h in self.hooks:
            for key, tensors in h.param_mirrors.items():
                mirrors.setdefault(h.mirror_part, {})[f"{h.name}/{key}"] = tensors
        return mirrors

    def save_checkpoint(self, keep: int) -> Path:
        lost = broadcast_object(self.lock.lost if self.lock is not None else None)
        if lost:  # another run took the work_dir over (engine/work_dir_lock.py): publish nothing more
            raise WorkDirBusy(f"work_dir {self.work_dir}: the lock was taken over by another run; "
                              f"stopping at step {self.step} without saving")
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
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "part_steps": dict(self.part_steps), "world_size": self.dist.world_size,
                "strategy_name": self.strategy.name, "strategy": self.strategy.state_dict(),
                "parts": {n: {"trainable": p.trainable} for n, p in self.parts.items()},
                "objective": self.objective.state_dict(),
                "hooks": {h.name: h.state_dict() for h in self.hooks},
            }, tmp / "trainer.pt")
        barrier()
        if self.dist.is_main:
            ckpt.finalize(tmp, final, self.work_dir, keep)
            log.info("saved %s (%.2f s)", final, time.perf_counter() - t0)
        barrier()
        self.checkpoint_requested = False
        return final

    def _resume(self) -> None:
        if self.resume is None:
            return
        path = ckpt.resolve_resume(self.work_dir, self.resume) if self.dist.is_main else None
        path = broadcast_object(path)
        if path is None:
            log.info("no complete checkpoint in %s: starting from scratch", self.work_dir)
            return
        state = ckpt.load_file(path / "trainer.pt")
        saved_parts = list(state.get("parts", {}))
        if saved_parts != list(self.parts) or state.get("strategy_name") != self.strategy.name:
            raise ConfigError(f"--resume {path}: written by strategy '{state.get('strategy_name')}' with parts "
                              f"{saved_parts}; this run is '{self.strategy.name}' with {list(self.parts)}")
        self.strategy.load(path, self._mirrors())
        self.step, self.nimg, self.skipped_steps = state["step"], state["nimg"], state["skipped_steps"]
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)  # absent in checkpoints before it was saved
        self.part_steps.update(state["part_steps"])
        self.strategy.load_state_dict(state["strategy"])
        self.objective.load_state_dict(state["objective"])
        for hook in self.hooks:
            hook.load_state_dict(state["hooks"].get(hook.name, {}))
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
        configured = self.cfg.train_cfg.batch_gpu
        clamp = (f" (train_cfg.batch_gpu {configured} is more than batch_size / world_size: using {self.batch_gpu})"
                 if configured != self.batch_gpu else "")
        parts = "; ".join(f"part {n}: {kind} parameters: {total / 1e6:.3f}M"
                          + (f" ({trainable / 1e6:.3f}M trainable)" if self.parts[n].trainable else " (frozen)")
                          for n, (kind, total, trainable) in self.part_summary.items())
        log.info(
            "diffscale: world size %d, device %s, strategy %s, precision %s | batch %d = batch_gpu %d x accum %d "
            "x world %d%s | %s | work_dir %s",
            self.dist.world_size, self.dist.device, self.strategy.name, self.precision, self.batch_size,
            self.batch_gpu, self.accum, self.dist.world_size, clamp, parts, self.work_dir)

    # ------------------------------------------------------------------ consolidated weights
    def consolidated_state(self, part: str, ema: str | None) -> dict[str, torch.Tensor] | None:
        """Full state_dict of `part` on rank 0 (None elsewhere), with the parameters of the average `ema` (an
        EMAHook average of that part) substituted when given. Collective."""
        if part not in self.parts:
            raise ConfigError(f"test_cfg.part: no part '{part}' in this run (parts: {', '.join(self.parts)})")
        state = self.strategy.full_state(part)
        if ema is None:
            return state
        mirrors = {k.split("/", 1)[1]: v for k, v in self._mirrors().get(part, {}).items()}
        if ema not in mirrors:
            raise ConfigError(f"no average '{ema}' of part '{part}'; have: {sorted(mirrors) or 'none'}")
        full = self.strategy.gather_full(part, mirrors[ema])
        if state is not None:
            state.update(full)
        return state
