"""Distillation suites on CIFAR-10-shaped data: DMD2's iteration in the trainer against its ideal, and one-step
generation against the teacher's Heun sampling.

dmd2_step         DMD2 (DMD2Loss over the parts generator / fake_score / real_score) on 3x32x32 images with 10 classes
                  (random pixels written by the real converter, read by configs/_base_/data/cifar10.py's loader with
                  its x-flips), every part EDM's DDPM++ (EDMPrecond around SongUNet preset ddpmpp) shrunk for a CPU:
                  `--distill-channels` (32; EDM's is 128) and `--distill-blocks` (4, EDM's), at `--distill-batch`
                  (4), fp32, random weights, DMD2's AdamW (lr 2e-6, betas (0.9, 0.999), weight decay 0.01, clipping
                  10). One cycle of gen_update_every (5) iterations of the real Trainer (common.trainer_step) against
                  its ideal: the passes the cycle must do, each timed alone on the trainer's own modules and batch,
                    generator phase   G fwd+bwd, D_real fwd, D_fake fwd (no grad), AdamW step of G
                    fake-score phase  G fwd (no grad), D_fake fwd+bwd, AdamW step of D_fake   (5 times)
                  Target ratio <= 1.10. The batches drawn are timed too and reported beside it (`data_ms_per_cycle`,
                  `ratio_with_data`), not counted in the ideal.
                  `--dmd2-gan`: DMD2's GAN term (DMD2Loss(gan_classifier=True), the fake score a FakeScoreWithHead
                  with a fresh head); the ideal then adds the head's passes: in the generator phase the fake score's
                  encoder and head on the samples, forward and backward to the samples only (its parameters take no
                  gradient), in each fake-score phase encoder and head on [real; fake] (2B), forward and backward.
one_step_vs_heun  Sampling img/s of one network (EDMPrecond around the same shrunk DDPM++, eval, random weights) at
                  `--distill-sample-batch` (16): one step (OneStepSampler, sigma 80: a DMD2 / CD generator's cost)
                  against the teacher's deterministic Heun with `--distill-heun-steps` (18: 35 network evaluations,
                  EDM's CIFAR-10 sampler), and a bare forward; speedup = Heun time / one-step time (ideal: the NFE
                  ratio, 35), and each sampler's time over its forwards (the samplers' own overhead).
Both run on the GPU when one is present (same code and precision); there `--distill-channels 128` is EDM's size.
"""

import argparse
import tempfile
from pathlib import Path

import torch

from tools.benchmarks.common import denoiser_passes, trainer_step
from tools.benchmarks.edm2 import interleaved, synthetic_mds

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 10
SIGMA_MAX = 80.0  # EDM's sigma_max: the generator's input level and the Heun sampler's start


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distill-channels", type=int, default=32, help="dmd2_step / one_step_vs_heun: SongUNet "
                   "model_channels (EDM's DDPM++: 128)")
    p.add_argument("--distill-blocks", type=int, default=4, help="SongUNet blocks per resolution (EDM's: 4)")
    p.add_argument("--distill-resolution", type=int, default=32, help="image side (CIFAR-10: 32)")
    p.add_argument("--distill-batch", type=int, default=4, help="dmd2_step: batch_size = batch_gpu")
    p.add_argument("--distill-cycles", type=int, default=1, help="dmd2_step: cycles (5 iterations) per timed round")
    p.add_argument("--distill-rounds", type=int, default=5, help="both: interleaved rounds (median)")
    p.add_argument("--distill-warmup", type=int, default=1, help="both: untimed calls of each first")
    p.add_argument("--distill-workers", type=int, default=1, help="dmd2_step: DataLoader workers of the loader")
    p.add_argument("--dmd2-gan", action="store_true", help="dmd2_step: with DMD2's GAN term (FakeScoreWithHead)")
    p.add_argument("--distill-sample-batch", type=int, default=16, help="one_step_vs_heun: samples per call")
    p.add_argument("--distill-heun-steps", type=int, default=18, help="one_step_vs_heun: Heun steps (18: 35 NFE)")


def score_config(args: argparse.Namespace) -> dict:
    """The EDM DDPM++ denoiser every part (and the sampling suite) uses, at the benchmark's size."""
    net = dict(type="SongUNet", preset="ddpmpp", img_resolution=args.distill_resolution, label_dim=NUM_CLASSES,
               augment_dim=0, model_channels=args.distill_channels, num_blocks=args.distill_blocks)
    return dict(type="EDMPrecond", sigma_data=0.5, label_dim=NUM_CLASSES, logvar_channels=0, net=net)


# ---------------------------------------------------------------------------------------------- dmd2_step
def write_dmd2_config(path: Path, args: argparse.Namespace, data: Path) -> None:
    """A DMD2 CIFAR-10 config over the shipped CIFAR-10 data and runtime bases, at the benchmark's sizes."""
    score = score_config(args)
    fake = dict(type="FakeScoreWithHead", score=score) if args.dmd2_gan else score
    adamw = dict(type="AdamW", lr=2e-6, betas=(0.9, 0.999), weight_decay=0.01)  # DMD2's CIFAR-10 optimizer
    parts = dict(generator=dict(model=score, optimizer=adamw, grad_clip=10.0),
                 fake_score=dict(model=fake, optimizer=adamw, grad_clip=10.0),
                 real_score=dict(model=score))  # frozen; random weights throughout (timing only)
    objective = dict(type="DMD2Loss", gen_update_every=5, sigma_max=SIGMA_MAX, sigma_gen=SIGMA_MAX)
    if args.dmd2_gan:
        objective["gan_classifier"] = True
    batch = args.distill_batch
    entries = dict(
        _base_=[str(ROOT / "configs/_base_/data/cifar10.py"), str(ROOT / "configs/_base_/runtime/default.py")],
        data=dict(train=dict(path=str(data), num_workers=args.distill_workers), val=dict(path=str(data))),
        parts=parts, objective=objective,
        train_cfg=dict(max_iters=1000000, batch_size=batch, batch_gpu=batch, precision="fp32", seed=0,
                       grad_clip=None, max_nonfinite_steps=10, log_interval=1000),
        checkpoint=dict(interval=1000000, keep=1), hooks=[], evaluators=[])
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in entries.items()))


def _optimizer_step(optimizer: torch.optim.Optimizer):
    """One step of `optimizer` on zero gradients (an AdamW step costs the same on any values), grads reset after."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    zeros = [torch.zeros_like(p) for p in params]

    def run() -> None:
        for p, z in zip(params, zeros, strict=True):
            p.grad = z
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def _gan_passes(obj, fake, x: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """The GAN head's passes: on samples-shaped input with gradients to the input only (generator phase), and on
    [real; fake] with gradients to the fake score and its head (fake-score phase)."""
    from diffscale.diffusion.dmd2 import no_parameter_grads

    x_g = torch.randn_like(x).clamp(-1, 1)  # stands for the generator's samples: same shape, device, dtype
    s_min = obj.grid(x.device)[:1].expand(x.shape[0])
    both, labels2 = torch.cat([x, x_g]), None if labels is None else torch.cat([labels, labels])

    def gen_side() -> None:
        inp = x_g.clone().requires_grad_(True)
        with no_parameter_grads(fake):
            logit = fake(inp, s_min, labels, return_logits=True)
        logit.sum().backward()

    def fake_side() -> None:
        fake(both, s_min.repeat(2), labels2, return_logits=True).sum().backward()
        fake.zero_grad(set_to_none=True)

    return {"gan_gen_fwd_bwd_input": gen_side, "gan_fake_fwd_bwd": fake_side}


def dmd2_passes(trainer, gan: bool) -> dict:
    """The passes of a DMD2 cycle, each a function timed alone, on the trainer's own modules and data."""
    obj = trainer.objective
    G, fake, real = (trainer.strategy.module(n) for n in ("generator", "fake_score", "real_score"))
    batch = next(trainer.loader)
    x, labels = batch["x"], batch.get("label")
    z = torch.randn_like(x) * obj.sigma_gen
    s_gen = torch.full((x.shape[0],), obj.sigma_gen, device=x.device)
    idx = torch.randint(obj.min_level, obj.max_level + 1, (x.shape[0],), device=x.device)
    sigma = obj.grid(x.device)[idx]
    x_t = x + sigma[:, None, None, None] * torch.randn_like(x)

    fwd_bwd, fwd = denoiser_passes(labels)

    passes = {"data": lambda: next(trainer.loader),
              "G_fwd_bwd": fwd_bwd(G, z, s_gen), "real_fwd": fwd(real, x_t, sigma), "fake_fwd": fwd(fake, x_t, sigma),
              "G_fwd": fwd(G, z, s_gen), "fake_fwd_bwd": fwd_bwd(fake, x_t, sigma),
              "adamw_G": _optimizer_step(trainer.strategy.optimizers["generator"]),
              "adamw_fake": _optimizer_step(trainer.strategy.optimizers["fake_score"])}
    if gan:
        passes.update(_gan_passes(obj, fake, x, labels))
    return passes


def bench_dmd2_step(args: argparse.Namespace) -> dict:
    from diffscale.config import load_config

    with tempfile.TemporaryDirectory(prefix="diffscale-bench-distill-") as tmp:
        data = synthetic_mds(Path(tmp), max(64, args.distill_batch), NUM_CLASSES, args.distill_resolution)
        write_dmd2_config(Path(tmp) / "dmd2_cifar10.py", args, data)
        cfg = load_config(str(Path(tmp) / "dmd2_cifar10.py"), [], str(Path(tmp) / "work_dir"))
        trainer, step = trainer_step(cfg)
        k = trainer.objective.gen_update_every
        fns = {"cycle": lambda: [step() for _ in range(k)], **dmd2_passes(trainer, args.dmd2_gan)}
        t = interleaved(fns, args.distill_warmup, args.distill_rounds, args.distill_cycles)
        trainer.loader.close()
        trainer.writer.close()
        trainer.release()  # the work_dir lock, before its folder goes
    gan_gen, gan_fake = t.get("gan_gen_fwd_bwd_input", 0.0), t.get("gan_fake_fwd_bwd", 0.0)
    generator_phase = t["G_fwd_bwd"] + t["real_fwd"] + t["fake_fwd"] + gan_gen + t["adamw_G"]
    fake_phase = t["G_fwd"] + t["fake_fwd_bwd"] + gan_fake + t["adamw_fake"]
    ideal = generator_phase + k * fake_phase
    data_time = k * t["data"]  # one batch per iteration (without the GAN term DMD2 reads only its labels)
    return {"batch": args.distill_batch, "resolution": args.distill_resolution, "channels": args.distill_channels,
            "blocks": args.distill_blocks, "gan": args.dmd2_gan, "gen_update_every": k,
            "device": trainer.dist.device.type, "threads": torch.get_num_threads(),
            **{f"{name}_params_M": trainer.part_summary[name][1] / 1e6 for name in trainer.parts},
            "cycle_ms": 1e3 * t["cycle"], "ms_per_iteration": 1e3 * t["cycle"] / k,
            "ideal_ms": 1e3 * ideal, "ratio": t["cycle"] / ideal, "target_ratio": 1.10,
            "generator_phase_ideal_ms": 1e3 * generator_phase, "fake_phase_ideal_ms": 1e3 * fake_phase,
            "data_ms_per_cycle": 1e3 * data_time, "ratio_with_data": t["cycle"] / (ideal + data_time),
            **{f"{name}_ms": 1e3 * v for name, v in t.items() if name != "cycle"}}


# ---------------------------------------------------------------------------------------------- one_step_vs_heun
def bench_one_step_vs_heun(args: argparse.Namespace) -> dict:
    from diffscale.registry import MODELS, build
    from diffscale.sampling.edm_heun import EDMHeunSampler
    from diffscale.sampling.one_step import OneStepSampler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = build(MODELS, score_config(args), "model").to(device).eval().requires_grad_(False)
    B, R, steps = args.distill_sample_batch, args.distill_resolution, args.distill_heun_steps
    gen = torch.Generator(device).manual_seed(0)
    noise = torch.randn(B, 3, R, R, device=device, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (B,), device=device, generator=gen)
    sigma = torch.ones(B, device=device)
    one_step = OneStepSampler(sigma_max=SIGMA_MAX)
    heun = EDMHeunSampler(num_steps=steps, sigma_min=0.002, sigma_max=SIGMA_MAX, rho=7.0)
    nfe = 2 * steps - 1  # a Heun correction at every step but the last (sigma -> 0)

    def forward() -> None:
        with torch.no_grad():
            net(noise, sigma, labels)

    fns = {"one_step": lambda: one_step(net, noise, labels), "heun": lambda: heun(net, noise, labels),
           "forward": forward}
    t = interleaved(fns, args.distill_warmup, args.distill_rounds, 1)
    speedup = t["heun"] / t["one_step"]
    return {"batch": B, "resolution": R, "channels": args.distill_channels, "blocks": args.distill_blocks,
            "device": device.type, "threads": torch.get_num_threads(),
            "params_M": sum(p.numel() for p in net.parameters()) / 1e6, "heun_steps": steps, "heun_nfe": nfe,
            "one_step_img_per_s": B / t["one_step"], "heun_img_per_s": B / t["heun"],
            "forward_ms": 1e3 * t["forward"], "one_step_ms": 1e3 * t["one_step"], "heun_ms": 1e3 * t["heun"],
            "speedup": speedup, "ideal_speedup": float(nfe), "speedup_over_ideal": speedup / nfe,
            "one_step_over_forward": t["one_step"] / t["forward"],
            "heun_over_forwards": t["heun"] / (nfe * t["forward"])}


SUITES = {"dmd2_step": bench_dmd2_step, "one_step_vs_heun": bench_one_step_vs_heun}
