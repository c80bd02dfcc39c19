"""DMD2 suite: one DMD2 toy iteration in the trainer against its ideal, the forward and backward passes it must do,
each timed alone in the same run on the same modules and batch (target: at most 1.10).

A cycle of `gen_update_every` (5) iterations holds one generator phase (G forward and backward, D_real and D_fake
forwards without gradients) and five fake-score phases (G forward without gradients, D_fake forward and
backward). Ideal cycle = (G fwd+bwd + D_real fwd + D_fake fwd) + 5 (G fwd + D_fake fwd+bwd). The optimizer steps
and the batches drawn are timed too and reported beside it (`adam_ms_per_cycle`, `data_ms_per_cycle`, and the
ratios that count them), not counted in the ideal.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from tools.benchmarks.common import denoiser_passes, time_steps, trainer_step

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dmd2-batch", type=int, default=4096, help="DMD2 toy batch per iteration")
    p.add_argument("--dmd2-cycles", type=int, default=10, help="generator cycles (5 iterations each) per round")


def _trainer(batch: int):
    from diffscale.config import load_config

    options = [f"train_cfg.batch_size={batch}", f"train_cfg.batch_gpu={batch}", "train_cfg.max_iters=1000000",
               "checkpoint.interval=1000000", "train_cfg.log_interval=50", "hooks=[]"]
    options += [f"parts.{p}.init=None" for p in ("generator", "fake_score", "real_score")]  # timing: random weights
    cfg = load_config(str(ROOT / "configs/dmd2/tree2d_dmd2.py"), options, tempfile.mkdtemp(prefix="diffscale-dmd2-"))
    return trainer_step(cfg)


def _passes(trainer) -> dict:
    """The passes of a DMD2 cycle, each a function timed alone, on the trainer's own modules and data."""
    obj, modules = trainer.objective, {n: trainer.strategy.module(n) for n in trainer.parts}
    G, fake, real = modules["generator"], modules["fake_score"], modules["real_score"]
    batch = next(trainer.loader)
    x, labels = batch["x"], batch.get("label")
    z = torch.randn_like(x) * obj.sigma_gen
    s_gen = torch.full((x.shape[0],), obj.sigma_gen)
    sigma = obj.grid(x.device)[torch.randint(obj.min_level, obj.max_level + 1, (x.shape[0],))]
    x_t = x + sigma[:, None] * torch.randn_like(x)
    optimizers = [trainer.strategy.optimizers[n] for n in ("generator", "fake_score")]

    fwd_bwd, fwd = denoiser_passes(labels)

    def adam() -> None:
        for opt in optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            opt.step()

    return {"data": lambda: next(trainer.loader),
            "G_fwd_bwd": fwd_bwd(G, z, s_gen), "real_fwd": fwd(real, x_t, sigma), "fake_fwd": fwd(fake, x_t, sigma),
            "G_fwd": fwd(G, z, s_gen), "fake_fwd_bwd": fwd_bwd(fake, x_t, sigma), "adam_both": adam}


def bench_dmd2(args: argparse.Namespace) -> dict:
    trainer, step = _trainer(args.dmd2_batch)
    k = trainer.objective.gen_update_every
    passes = _passes(trainer)
    cycle = lambda: [step() for _ in range(k)]  # noqa: E731  (one generator step and k fake-score steps)
    fns = {"cycle": cycle, **passes}
    for fn in fns.values():
        time_steps(fn, 3)
    timings = {name: [] for name in fns}
    for r in range(args.rounds):  # interleaved, reversed every other round: drift hits all alike
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            timings[name].append(time_steps(fns[name], args.dmd2_cycles if name == "cycle" else 5 * args.dmd2_cycles))
    t = {name: statistics.median(v) for name, v in timings.items()}
    ideal = (t["G_fwd_bwd"] + t["real_fwd"] + t["fake_fwd"]) + k * (t["G_fwd"] + t["fake_fwd_bwd"])
    # The optimizer steps of a cycle: the generator once, the fake score k times; adam_both steps both once.
    adam = t["adam_both"] / 2 * (1 + k)
    data = k * t["data"]  # one batch drawn per iteration (DMD2 reads only its labels and shape)
    trainer.writer.close()
    return {"batch": args.dmd2_batch, "gen_update_every": k, "cycle_ms": 1e3 * t["cycle"],
            "ideal_passes_ms": 1e3 * ideal, "ratio": t["cycle"] / ideal, "target_ratio": 1.10,
            "adam_ms_per_cycle": 1e3 * adam, "ratio_with_adam": t["cycle"] / (ideal + adam),
            "data_ms_per_cycle": 1e3 * data, "ratio_with_adam_and_data": t["cycle"] / (ideal + adam + data),
            **{f"{name}_ms": 1e3 * v for name, v in t.items() if name != "cycle"}}


SUITES = {"dmd2": bench_dmd2}
