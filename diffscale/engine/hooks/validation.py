"""ValidationHook: the objective's loss on a fixed held-out set every `interval` steps.

Under data curation the training loss is measured on the examples the selector kept, so it is biased
(towards learnable or hard examples); the validation loss is not. Every evaluation uses the same
examples and noise (the objective's `sample_condition`, drawn once from a fixed seed), so differences between
evaluations and
between runs are the model's alone.

By default an EDM loss is the denoising error without the learned log-variance (`objective_overrides`
sets `learned_logvar=False`): the log-variance is each model's own fit of its error, and comparing runs
needs a common yardstick.

Writes TensorBoard `val/loss` (x: step) and `val/loss_by_nimg` (x: training images), and
work_dir/val_loss.jsonl lines {step, nimg, train_seconds, loss}; train_seconds is the training wall
time so far, excluding the time spent validating and survives resume.
"""

import inspect
import json
import time

import torch

from diffscale.engine.hooks.base import Hook, every
from diffscale.engine.precision import autocast
from diffscale.errors import ConfigError
from diffscale.registry import DATASETS, HOOKS, OBJECTIVES, build, lookup
from diffscale.utils.dist import all_reduce_sum


@HOOKS.register_module()
class ValidationHook(Hook):
    def __init__(
        self,
        interval: int = 100,  # steps between evaluations (also at step 0 and at the end)
        num_batches: int = 4,  # held-out batches of batch_gpu per rank
        seed: int = 12345,  # of the held-out examples and their sigma and noise; differs from training's
        objective_overrides: dict | None = None,  # merged into cfg.objective; default learned_logvar=False where
        # the objective has that argument (EDM), else none
    ):
        if interval < 1 or num_batches < 1:
            raise ConfigError(f"ValidationHook: interval and num_batches must be >= 1, got {interval}, {num_batches}")
        self.interval, self.num_batches, self.seed = interval, num_batches, seed
        self.objective_overrides = objective_overrides
        self.train_seconds = 0.0

    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        cfg = trainer.cfg
        data_cfg = cfg.data.get("val") or cfg.data.train
        overrides = self.objective_overrides
        if overrides is None:  # EDM's learned log-variance is each model's own fit: compare runs without it
            accepts = inspect.signature(lookup(OBJECTIVES, cfg.objective["type"], "objective")).parameters
            overrides = {"learned_logvar": False} if "learned_logvar" in accepts else {}
        self.objective = build(OBJECTIVES, {**dict(cfg.objective), **overrides}, "objective")
        self.part = self.objective.score_part
        loader = build(DATASETS, data_cfg, "data.val", batch_gpu=trainer.batch_gpu, rank=trainer.dist.rank,
                       world_size=trainer.dist.world_size, seed=self.seed, device=trainer.dist.device)
        # Drawn once: the same examples, sigma and noise at every evaluation.
        gen = torch.Generator(trainer.dist.device).manual_seed(self.seed + trainer.dist.rank)
        self.batches = []
        for _ in range(self.num_batches):
            batch = next(loader)
            self.batches.append(dict(batch, cond=self.objective.sample_condition(batch["x"], gen)))
        self.path = trainer.work_dir / "val_loss.jsonl"
        self.clock = None  # starts at the first step, so start-up and resume are not counted

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def before_step(self, batch: dict) -> dict:
        if self.clock is None:  # the first micro-batch of this run (fresh or resumed)
            if self.trainer.step == 0:
                self.evaluate(step=0, nimg=0)  # the untrained model: every curve starts at the same point
            self.clock = time.perf_counter()
        return batch

    def after_step(self, metrics: dict) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self.clock
        step = self.trainer.step
        if every(step, self.interval, self.trainer.max_iters):
            self.evaluate(step, self.trainer.nimg)
        self.clock = time.perf_counter()

    @torch.no_grad()
    def evaluate(self, step: int, nimg: int) -> float:
        trainer = self.trainer
        total = torch.zeros((), device=trainer.dist.device)
        model = trainer.strategy.module(self.part)
        was_training = model.training
        model.eval()  # no dropout, and no in-place weight updates some models make in training mode
        with autocast(trainer.precision, trainer.dist.device):
            for b in self.batches:
                losses = self.objective.per_example(model, b, b["cond"])
                total += losses.float().mean()
        model.train(was_training)
        loss = (all_reduce_sum(total) / (self.num_batches * trainer.dist.world_size)).item()
        if trainer.dist.is_main:
            trainer.writer.add_scalar("val/loss", loss, step)
            trainer.writer.add_scalar("val/loss_by_nimg", loss, nimg)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, "nimg": nimg, "train_seconds": round(self.train_seconds, 4),
                                    "loss": loss}) + "\n")
        return loss
