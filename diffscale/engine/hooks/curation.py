"""CurationHook: online data selection (JEST / AJEST / Early AJEST / random) before every micro-batch.

The loader yields a super-batch of B = b / (1 - filter_ratio) per device. The learner and the frozen
reference score every example on the same noise (the objective's `sample_condition`: EDM's sigma and noise),
without gradients and in the run's precision;
the selector keeps b; the step trains on those b at the condition they were scored at (batch['cond']). Cost per
micro-batch: two forward passes over B plus one ordinary step over b.

scope='local' selects per device (as the AJEST work); scope='global' all-gathers the losses and the
super-batch, makes one selection over the global super-batch with a generator identical on every rank,
and each rank trains on its share.

Early AJEST: running means of the learner's and the reference's super-batch loss; once the learner's is
below the reference's at `patience` consecutive checks, selection stops for good and the loader goes back
to batches of b, so no scoring is wasted.
"""

import logging
import time

import torch
import torch.distributed as dist

from diffscale.diffusion.base import index_batch
from diffscale.engine.hooks.base import Hook, every
from diffscale.engine.precision import autocast
from diffscale.engine.reference import load_frozen
from diffscale.errors import ConfigError
from diffscale.registry import HOOKS, SELECTORS, build
from diffscale.utils.dist import all_reduce_sum

log = logging.getLogger("diffscale")


def _gather(t: torch.Tensor, world_size: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _gather_batch(batch: dict, world_size: int) -> dict:
    """Every rank's examples of a batch (tensors [B, ...] or dicts of them, as the condition is), concatenated."""
    return {k: _gather_batch(v, world_size) if isinstance(v, dict) else _gather(v, world_size)
            for k, v in batch.items()}


@HOOKS.register_module()
class CurationHook(Hook):
    def __init__(
        self,
        selector: dict,  # a SELECTORS config, e.g. dict(type="jest", n_chunks=8)
        filter_ratio: float = 0.8,  # share of the super-batch dropped: B = b / (1 - filter_ratio)
        reference: dict | None = None,  # dict(model=<model config>, checkpoint=<path>, ema="pf_0.100" | None)
        scope: str = "local",  # 'local' (per device) or 'global' (one selection over all ranks)
        early: dict | None = None,  # Early AJEST: dict(patience=3, momentum=0.9, check_interval=10)
        seed: int = 0,  # the global-scope selection generator
        log_interval: int = 16,  # steps between TensorBoard points
        per_element: bool = True,  # score with per-element losses (an objective that sums over pixels is divided
        # by the pixel count), so JEST's softmax over learnability sees losses of order 1 at any resolution
    ):
        if not 0 <= filter_ratio < 1:
            raise ConfigError(f"CurationHook.filter_ratio: expected 0 <= r < 1, got {filter_ratio}")
        if scope not in ("local", "global"):
            raise ConfigError(f"CurationHook.scope: expected 'local' or 'global', got '{scope}'")
        self.selector = build(SELECTORS, selector, "CurationHook.selector")
        if self.selector.needs_ref and reference is None:
            raise ConfigError(f"CurationHook.reference: selector '{selector['type']}' needs a reference model")
        self.filter_ratio, self.reference_cfg, self.scope, self.seed = filter_ratio, reference, scope, seed
        self.early = {"patience": 3, "momentum": 0.9, "check_interval": 10, **early} if early is not None else None
        self.log_interval, self.per_element = log_interval, per_element
        self.active, self.switch_step, self.below_count = True, None, 0
        self.running: torch.Tensor | None = None  # running means [learner, reference] of super-batch losses
        self.device = torch.device("cpu")  # until before_run moves the generator to the run's device
        self.generator = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ set-up and state
    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        self.b = trainer.batch_gpu
        self.B = round(self.b / (1 - self.filter_ratio))
        self.device, self.world = trainer.dist.device, trainer.dist.world_size
        self.part = trainer.objective.score_part  # the learner: the part the objective's per_example scores
        self.num_classes = int(getattr(trainer.strategy.module(self.part), "label_dim", 0)) or 1  # class shares
        self.ref = None
        if self.reference_cfg is not None:
            cfg = dict(self.reference_cfg)
            self.ref = load_frozen(cfg["model"], cfg["checkpoint"], cfg.get("ema"), self.device,
                                   "CurationHook.reference", part=cfg.get("part"))
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.stats = self._zero_stats()
        self.score_seconds, self.select_seconds = 0.0, 0.0
        trainer.loader.batch_gpu = self.B
        log.info("curation: super-batch %d per device, keep %d (%s selection, %s), reference %s", self.B,
                 self.b, self.scope, type(self.selector).__name__, "yes" if self.ref is not None else "no")

    def state_dict(self) -> dict:
        return {"active": self.active, "switch_step": self.switch_step, "below_count": self.below_count,
                "running": None if self.running is None else self.running.cpu(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.active, self.switch_step = state["active"], state["switch_step"]
        self.below_count = state["below_count"]
        self.running = None if state["running"] is None else state["running"].to(self.device)
        self.generator.set_state(state["generator"])
        if not self.active:
            self.trainer.loader.batch_gpu = self.b

    # ------------------------------------------------------------------ the selection
    def before_step(self, batch: dict) -> dict:
        if not self.active:
            return batch
        trainer = self.trainer
        t0 = time.perf_counter()
        objective, x = trainer.objective, batch["x"]
        cond = objective.sample_condition(x, trainer.generator)
        with torch.no_grad(), autocast(trainer.precision, self.device):
            learner = objective.per_example(trainer.strategy.module(self.part), batch, cond).float()
            ref = None if self.ref is None else objective.per_example(self.ref, batch, cond).float()
        elements = getattr(objective, "elements_per_score", None)
        if self.per_element and elements is not None and elements(x) != 1:
            n = elements(x)
            learner, ref = learner / n, None if ref is None else ref / n
        t1 = time.perf_counter()
        full = dict(batch, cond=cond)
        if self.scope == "global" and self.world > 1:
            learner, ref = _gather(learner, self.world), None if ref is None else _gather(ref, self.world)
            full = _gather_batch(full, self.world)
            idx = self.selector(learner, ref, self.b * self.world, self.generator)
            idx = idx[trainer.dist.rank * self.b: (trainer.dist.rank + 1) * self.b]  # this rank's share
        else:
            idx = self.selector(learner, ref, self.b, trainer.generator)
        self.score_seconds += t1 - t0
        self.select_seconds += time.perf_counter() - t1
        self._account(learner, ref, idx, full.get("label"))
        return index_batch(full, idx)

    def _zero_stats(self) -> dict:
        return {"learner": torch.zeros((), device=self.device), "ref": torch.zeros((), device=self.device),
                "score_all": torch.zeros((), device=self.device), "score_kept": torch.zeros((), device=self.device),
                "classes": None, "n": 0}

    def _account(self, learner: torch.Tensor, ref: torch.Tensor | None, idx: torch.Tensor,
                 labels: torch.Tensor | None) -> None:
        """Accumulate on the device; nothing is read to the host until a log step."""
        score = learner - ref if ref is not None else learner  # learnability, or the learner loss alone
        s = self.stats
        s["learner"] += learner.mean()
        s["ref"] += ref.mean() if ref is not None else 0.0
        s["score_all"] += score.mean()
        s["score_kept"] += score[idx].mean()
        if labels is not None:
            kept = torch.bincount(labels[idx].long(), minlength=self.num_classes)
            s["classes"] = kept.float() if s["classes"] is None else s["classes"] + kept.float()
        s["n"] += 1

    # ------------------------------------------------------------------ Early AJEST and logging
    def after_step(self, metrics: dict) -> None:
        trainer = self.trainer
        if not self.active or self.stats["n"] == 0:
            return
        if self.early is not None and self.ref is not None:
            pair = all_reduce_sum(torch.stack([self.stats["learner"], self.stats["ref"]]) / self.stats["n"])
            pair = pair / self.world
            m = self.early["momentum"]
            self.running = pair if self.running is None else m * self.running + (1 - m) * pair
            if every(trainer.step, self.early["check_interval"]):
                self._check_switch()
        if every(trainer.step, self.log_interval) or not self.active:
            self._log()

    def _check_switch(self) -> None:
        learner_mean, ref_mean = self.running.tolist()  # one host read every check_interval steps
        self.below_count = self.below_count + 1 if learner_mean < ref_mean else 0
        if self.below_count >= self.early["patience"]:
            self.active, self.switch_step = False, self.trainer.step
            self.trainer.loader.batch_gpu = self.b
            log.info("Early AJEST: learner loss %.5g below reference %.5g for %d checks; selection off from "
                     "step %d", learner_mean, ref_mean, self.below_count, self.switch_step)

    def _log(self) -> None:
        trainer, s = self.trainer, self.stats
        n = max(s["n"], 1)
        scalars = {
            "curation/learner_superbatch_loss": (s["learner"] / n).item(),
            "curation/score_all": (s["score_all"] / n).item(),
            "curation/score_kept": (s["score_kept"] / n).item(),
            "curation/scoring_ms": 1e3 * self.score_seconds / n,
            "curation/selection_ms": 1e3 * self.select_seconds / n,
            "curation/active": float(self.active),
        }
        if self.ref is not None:
            scalars["curation/reference_superbatch_loss"] = (s["ref"] / n).item()
        if s["classes"] is not None and s["classes"].numel() <= 16:
            shares = s["classes"] / s["classes"].sum()
            scalars.update({f"curation/class_{c}_share": v for c, v in enumerate(shares.tolist())})
        if trainer.dist.is_main:
            for key, value in scalars.items():
                trainer.writer.add_scalar(key, value, trainer.step)
            if self.switch_step is not None:
                trainer.writer.add_scalar("curation/early_switch_step", self.switch_step, trainer.step)
        self.stats, self.score_seconds, self.select_seconds = self._zero_stats(), 0.0, 0.0
