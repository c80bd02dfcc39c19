"""EvalHook: sample and evaluate every `interval` steps during training, log `eval/<metric>` to TensorBoard, and
keep the best checkpoint by one metric in work_dir/best/.

Generation and evaluation are the ones of tools/test.py (sampling/generate.py, evaluation/pipeline.py), spread
over every rank. The best checkpoint is published like the others (engine/checkpoint.py): its files are
hard-linked (copied across file systems) into best/iter_XXXXXXX.tmp/, renamed, and only then do best/best.json
(metric, mode, value, step) and best/last_checkpoint (so `best/` loads as a work_dir anywhere a checkpoint is
taken) switch to it, each by an atomic rename; older best/iter_* are removed after.
"""

import json
import logging
import os
import shutil
from pathlib import Path

from diffscale.engine import checkpoint as ckpt
from diffscale.engine.hooks.base import Hook, every
from diffscale.engine.hooks.nets import part_copy
from diffscale.errors import ConfigError
from diffscale.evaluation.pipeline import (
    build_evaluators,
    build_guide,
    check_inputs,
    hand_over_network,
    load_ref,
    part_model_cfg,
    run_evaluation,
    sampling_parts,
    test_settings,
)
from diffscale.registry import HOOKS, MODELS, SAMPLERS, build
from diffscale.sampling.generate import generate, sample_shape, unconditional
from diffscale.sampling.guidance import guided

log = logging.getLogger("diffscale")
HIGHER_IS_BETTER = ("_acc", "accuracy", "support_share")  # metric-name endings; everything else: lower is better


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no extra space; the source checkpoint may be pruned later, the link keeps the data
    except OSError:
        shutil.copy2(src, dst)


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish_best(src: Path, work_dir: Path, record: dict) -> Path:
    """Make checkpoint directory `src` work_dir/best/<its name>, atomically; returns that path."""
    root = work_dir / "best"
    root.mkdir(parents=True, exist_ok=True)
    final = root / src.name
    tmp = ckpt.temp_dir(final)
    for stale in (tmp, final):  # a copy killed half-way; a re-publish of the same step after a resume
        if stale.exists():
            shutil.rmtree(stale)
    shutil.copytree(src, tmp, copy_function=_link_or_copy)
    os.replace(tmp, final)
    _replace_text(root / "best.json", json.dumps(dict(record, checkpoint=str(final)), indent=1) + "\n")
    ckpt.write_pointer(root, final)
    for old in root.iterdir():
        if old.is_dir() and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


@HOOKS.register_module()
class EvalHook(Hook):
    """Every `interval` steps and at the last step, generate `num` samples with the config's `test_cfg` (keys
    overridden by `test_cfg` here) from the average `test_cfg.ema`, and evaluate them with `evaluators` (default:
    the config's `evaluators`) against `ref` (default: test_cfg.ref).

    `best_metric` (a reported name, e.g. 'fid') keeps work_dir/best/ as the checkpoint of the best value so far;
    `best_mode` 'min' or 'max' (default: 'max' for accuracies and support share, else 'min'). An evaluation at a
    step that saves no checkpoint saves one, when it is the best."""

    def __init__(self, interval: int = 1000, num: int = 1000, evaluators: list | None = None, ref: str | None = None,
                 test_cfg: dict | None = None, best_metric: str | None = None, best_mode: str | None = None):
        if interval <= 0:
            raise ConfigError(f"EvalHook.interval: expected a positive integer, got {interval}")
        self.interval, self.num, self.evaluator_cfgs, self.ref = interval, num, evaluators, ref
        self.test_cfg_overrides, self.best_metric = dict(test_cfg or {}), best_metric
        if best_mode is None and best_metric is not None:
            best_mode = "max" if best_metric.endswith(HIGHER_IS_BETTER) else "min"
        if best_mode not in (None, "min", "max"):
            raise ConfigError(f"EvalHook.best_mode: expected 'min' or 'max', got '{best_mode}'")
        self.best_mode = best_mode
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.pending_step: int | None = None  # best step whose checkpoint is not published yet

    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        device = trainer.dist.device
        merged = dict(trainer.cfg.get("test_cfg") or {}) | self.test_cfg_overrides
        self.settings = test_settings({"test_cfg": merged}, num=self.num, ref=self.ref)
        self.evaluators = build_evaluators(self.evaluator_cfgs or trainer.cfg.evaluators, device, "EvalHook.evaluators")
        self.ref_stats = load_ref(self.settings["ref"], self.evaluators)
        self.sampler = build(SAMPLERS, self.settings["sampler"], "test_cfg.sampler")
        self.part, decoder = sampling_parts(trainer.cfg, self.settings)
        probe = build(MODELS, part_model_cfg(trainer.cfg, self.part), "test_cfg.part")  # shapes and classes only
        self.num_classes = int(getattr(probe, "label_dim", 0))
        check_inputs(self.evaluators, self.settings["images"], self.num_classes > 0)
        self.shape = sample_shape(probe, self.settings["shape"])
        guide = self.settings["guide"]
        self.guide = build_guide(guide, None, device) if isinstance(guide, dict) else None  # 'cfg': per evaluation
        # The decoder is frozen: one copy for the run on every rank (collective).
        self.decoder = part_copy(trainer, decoder, None, device, all_ranks=True) if decoder else None

    def after_step(self, metrics: dict) -> None:
        self._publish_pending()
        if every(self.trainer.step, self.interval, self.trainer.max_iters):
            self.evaluate()

    def after_run(self) -> None:
        self._publish_pending()

    def after_interrupt(self) -> None:
        self._publish_pending()  # links of a checkpoint already on disk: cheap

    def evaluate(self) -> dict[str, float]:
        """One evaluation of the current weights (the average test_cfg.ema). Collective."""
        trainer, s = self.trainer, self.settings
        net = part_copy(trainer, self.part, s["ema"], trainer.dist.device, all_ranks=True)
        guide = unconditional(net) if s["guide"] == "cfg" else self.guide
        batches = iter(())  # no evaluator reads samples (NLL only): generate none
        if hand_over_network(self.evaluators, net):
            batches = generate(net, self.sampler, s["num"], s["batch_gpu"], self.shape, guide=guide,
                               num_classes=self.num_classes, seed=s["seed"], rank=trainer.dist.rank,
                               world_size=trainer.dist.world_size, device=trainer.dist.device, images=s["images"],
                               decoder=self.decoder)
        denoiser = guided(net, guide, getattr(self.sampler, "guidance", 1.0))
        result = run_evaluation(self.evaluators, batches, self.ref_stats, denoiser)
        values = result["metrics"]
        if trainer.dist.is_main:
            for name, value in values.items():
                trainer.writer.add_scalar(f"eval/{name}", value, trainer.step)
            with open(trainer.work_dir / "eval_metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": trainer.step, **values, "comparable": result["comparable"]}) + "\n")
            log.info("eval at step %d (%d samples, %.1f s): %s", trainer.step, result["num"],
                     result["seconds"]["total"], ", ".join(f"{k} {v:.5g}" for k, v in values.items()))
        if self.best_metric is not None:
            self._track_best(values)
        return values

    def _track_best(self, values: dict[str, float]) -> None:
        if self.best_metric not in values:
            raise ConfigError(f"EvalHook.best_metric: '{self.best_metric}' is not reported; have {sorted(values)}")
        value, trainer = values[self.best_metric], self.trainer
        better = self.best_value is None or (value < self.best_value if self.best_mode == "min"
                                             else value > self.best_value)
        if not better:
            return
        self.best_value, self.best_step, self.pending_step = value, trainer.step, trainer.step
        trainer.checkpoint_requested = True  # CheckpointHook (it runs last) saves this step's checkpoint

    def _publish_pending(self) -> None:
        """Runs before the checkpoint hook of the next step (or at the end), when the best step's checkpoint is
        complete on disk."""
        if self.pending_step is None:
            return
        trainer = self.trainer
        if trainer.dist.is_main:
            src = ckpt.checkpoint_dir(trainer.work_dir, self.pending_step)
            if ckpt.verify(src) is None:
                record = {"metric": self.best_metric, "mode": self.best_mode, "value": self.best_value,
                          "step": self.best_step}
                log.info("best %s %.5g at step %d: %s", self.best_metric, self.best_value, self.best_step,
                         publish_best(src, trainer.work_dir, record))
            else:
                log.warning("best checkpoint %s is missing or incomplete; best/ not updated", src)
        self.pending_step = None

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_step": self.best_step, "pending_step": self.pending_step}

    def load_state_dict(self, state: dict) -> None:
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self.pending_step = state.get("pending_step")
