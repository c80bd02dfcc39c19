"""Toy suites: the trainer's overhead, the AJEST step and JEST selection on the 2D tree toy."""

import argparse
import statistics
from pathlib import Path

import torch

from tools.benchmarks.common import time_steps, trainer_step

ROOT = Path(__file__).resolve().parents[2]


def _toy_trainer(config: str, args: argparse.Namespace, edit=None):
    import tempfile

    from diffscale.config import load_config

    options = [f"train_cfg.batch_size={args.batch}", f"train_cfg.batch_gpu={args.batch}",
               "train_cfg.max_iters=1000000", "checkpoint.interval=1000000", "train_cfg.log_interval=50"]
    cfg = load_config(str(ROOT / config), options, tempfile.mkdtemp(prefix="diffscale-bench-"))
    if edit is not None:
        edit(cfg)
    return trainer_step(cfg)


def bench_trainer(args: argparse.Namespace) -> dict:
    from diffscale.registry import DATASETS, MODELS, OBJECTIVES, OPTIMIZERS, build

    trainer, trainer_step = _toy_trainer("configs/toy/tree2d_baseline.py", args, lambda cfg: setattr(cfg, "hooks", []))
    cfg, device = trainer.cfg, trainer.dist.device

    # The bare loop: same model config, seed, data stream, loss and optimizer; nothing else.
    torch.manual_seed(cfg.train_cfg.seed)
    model = build(MODELS, cfg.model, "model").to(device)
    objective = build(OBJECTIVES, cfg.objective, "objective")
    optimizer = build(OPTIMIZERS, dict(cfg.optimizer), "optimizer", params=list(model.parameters()))
    loader = build(DATASETS, cfg.data.train, "data.train", batch_gpu=args.batch, rank=0, seed=0, device=device)
    generator = torch.Generator(device).manual_seed(0)

    def bare_step() -> None:
        batch = next(loader)
        loss = objective.per_example(model, batch, objective.sample_condition(batch["x"], generator)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for fn in (trainer_step, bare_step):  # warm-up
        time_steps(fn, args.warmup)
    rounds = {"trainer": [], "bare": []}
    for _ in range(args.rounds):  # interleaved, so drift in machine speed hits both alike
        rounds["trainer"].append(time_steps(trainer_step, args.steps))
        rounds["bare"].append(time_steps(bare_step, args.steps))
    t_trainer, t_bare = statistics.median(rounds["trainer"]), statistics.median(rounds["bare"])
    return {
        "batch": args.batch, "steps_per_round": args.steps, "rounds": args.rounds,
        "trainer_ms_per_step": 1e3 * t_trainer, "bare_ms_per_step": 1e3 * t_bare,
        "ratio": t_trainer / t_bare, "target_ratio": 1.10,
    }


def bench_ajest(args: argparse.Namespace) -> dict:
    import tempfile

    from safetensors.torch import save_file

    from diffscale.config import load_config
    from diffscale.registry import MODELS, build

    # A reference of the configured architecture with random weights, saved as an export.
    ajest_cfg = load_config(str(ROOT / "configs/toy/tree2d_ajest.py"))
    ref_model_cfg = ajest_cfg.hooks[0]["reference"]["model"]
    ref_path = Path(tempfile.mkdtemp(prefix="diffscale-bench-")) / "ref.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in build(MODELS, ref_model_cfg, "ref").state_dict().items()},
              str(ref_path))

    def only_curation(cfg) -> None:
        curation = dict(cfg.hooks[0])
        curation["reference"] = dict(curation["reference"], checkpoint=str(ref_path), ema=None)
        cfg.hooks = [curation]

    base, base_step = _toy_trainer("configs/toy/tree2d_baseline.py", args, lambda cfg: setattr(cfg, "hooks", []))
    ajest, ajest_step = _toy_trainer("configs/toy/tree2d_ajest.py", args, only_curation)
    curation = ajest.hooks[1]
    batch = next(base.loader)
    B = curation.B
    x = torch.cat([batch["x"]] * (B // args.batch + 1))[:B]
    labels = torch.cat([batch["label"]] * (B // args.batch + 1))[:B]
    cond = base.objective.sample_condition(x, base.generator)

    def fwd(model):
        def run() -> None:
            with torch.no_grad():
                base.objective.per_example(model, {"x": x, "label": labels}, cond)
        return run

    # The selection alone, on losses of the super-batch's size, as the hook calls it.
    learner_loss, ref_loss = torch.rand(B, generator=torch.Generator().manual_seed(1)), torch.rand(B)
    select = lambda: curation.selector(learner_loss, ref_loss, args.batch, base.generator)  # noqa: E731

    timings = {"base": [], "ajest": [], "fwd_learner": [], "fwd_ref": [], "select": []}
    fns = {"base": base_step, "ajest": ajest_step, "fwd_learner": fwd(base.strategy.module("model")),
           "fwd_ref": fwd(curation.ref), "select": select}
    for fn in fns.values():
        time_steps(fn, args.warmup)
    for _ in range(args.rounds):
        for key, fn in fns.items():
            timings[key].append(time_steps(fn, args.steps))
    t = {k: statistics.median(v) for k, v in timings.items()}
    ideal = 1 + (t["fwd_learner"] + t["fwd_ref"]) / t["base"]
    return {"batch": args.batch, "superbatch": B, "base_ms": 1e3 * t["base"], "ajest_ms": 1e3 * t["ajest"],
            "fwd_learner_B_ms": 1e3 * t["fwd_learner"], "fwd_ref_B_ms": 1e3 * t["fwd_ref"],
            "ratio": t["ajest"] / t["base"], "ideal_ratio": ideal, "overhead_vs_ideal": t["ajest"] / t["base"] / ideal,
            "selection_ms": 1e3 * t["select"], "selection_share": t["select"] / t["ajest"],
            "target_selection_share": 0.02}


def bench_jest(args: argparse.Namespace) -> dict:
    from diffscale.selection.jest import JEST
    from diffscale.selection.jest_direct import direct_jest

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, n_select = args.superbatch, args.superbatch // 5  # filter ratio 0.8
    gen = torch.Generator(device).manual_seed(0)
    learner = torch.rand(B, device=device, generator=gen)
    ref = torch.rand(B, device=device, generator=gen)
    jest = JEST(n_chunks=8)
    ours = lambda: jest(learner, ref, n_select, gen)
    direct = lambda: direct_jest(learner, ref, n_select, 8, "learnability", gen)
    time_steps(ours, 3)
    time_steps(direct, 1)
    t_ours = statistics.median(time_steps(ours, 10) for _ in range(args.rounds))
    t_direct = statistics.median(time_steps(direct, 1) for _ in range(max(args.rounds // 2, 1)))
    return {"superbatch": B, "n_select": n_select, "n_chunks": 8, "jest_ms": 1e3 * t_ours,
            "direct_matrix_ms": 1e3 * t_direct, "speedup": t_direct / t_ours, "target_ms": 20.0}


SUITES = {"trainer": bench_trainer, "ajest": bench_ajest, "jest": bench_jest}
