"""DDPM suites: the trainer's overhead on a DDPM U-Net step, a sampler step's overhead over the network, and the
timestep resampler's cost.

ddpm_step     DDPMUNet `--ddpm-preset` (tiny, at `--ddpm-resolution` 32) at `--ddpm-batch` (8), fp32, inside the
              Trainer built from configs/ddpm/unet_imagenet64_res_res_atn.py (learned variance, hybrid loss, label
              dropout, importance sampling ON; data: synthetic MDS written by the real converter; hooks=[]) against
              a bare PyTorch step of the same network (DDPMLoss.per_example, AdamW, the trainer's own loader).
              Interleaved rounds, medians; target ratio <= 1.05. The resampler's work of one step (draw t for the
              batch, update the history with the step's losses) timed alone: `resampler_share` of the trainer
              step, target < 1%.
uvit_step     the same for U-ViT (configs/deediff/uvit_s2_cifar10.py: L_simple, fixed variance; importance
              sampling on), `--uvit-preset` (tiny; uvit_s2_cifar10 is the paper's 44M model) at `--ddpm-batch`.
ddpm_sampler  One sampling call of DDIM (eta 1: step noise drawn) and of respaced ancestral DDPM over
              `--ddpm-sampler-steps` (10) steps on the same network in eval mode, against that many bare forward
              passes of the network on the same batch; target ratio <= 1.05 each.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from tools.benchmarks.common import time_steps, trainer_step
from tools.benchmarks.edm2 import bare_step, interleaved, synthetic_mds

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/ddpm/unet_imagenet64_res_res_atn.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ddpm-preset", default="tiny", help="ddpm_*: DDPMUNet preset")
    p.add_argument("--ddpm-resolution", type=int, default=32, help="ddpm_*: image resolution (the preset's if 0)")
    p.add_argument("--ddpm-batch", type=int, default=8, help="ddpm_*: batch_size = batch_gpu")
    p.add_argument("--ddpm-steps", type=int, default=2, help="ddpm_step: steps per timed round")
    p.add_argument("--ddpm-rounds", type=int, default=6, help="ddpm_*: interleaved rounds (median)")
    p.add_argument("--ddpm-warmup", type=int, default=2, help="ddpm_*: untimed calls of each first")
    p.add_argument("--ddpm-sampler-steps", type=int, default=10, help="ddpm_sampler: sampling steps per call")
    p.add_argument("--uvit-preset", default="tiny", help="uvit_step: UViT preset")


def _model_cfg(args: argparse.Namespace, model_type: str = "DDPMUNet", preset: str | None = None) -> dict:
    cfg = dict(type=model_type, preset=preset or args.ddpm_preset)
    if args.ddpm_resolution and model_type == "DDPMUNet":
        cfg["img_resolution"] = args.ddpm_resolution
    return cfg


def bench_step(args: argparse.Namespace) -> dict:
    return _step(args, CONFIG, _model_cfg(args))


def bench_uvit_step(args: argparse.Namespace) -> dict:
    return _step(args, "configs/deediff/uvit_s2_cifar10.py", _model_cfg(args, "UViT", args.uvit_preset))


def _step(args: argparse.Namespace, config: str, model_cfg: dict) -> dict:
    """Trainer step vs bare step of `config` with its model replaced by `model_cfg` (see the module docstring)."""
    from diffscale.config import load_config

    batch, steps = args.ddpm_batch, args.ddpm_steps
    with tempfile.TemporaryDirectory(prefix="diffscale-bench-ddpm-") as tmp:
        probe = _build_net(model_cfg)
        data = synthetic_mds(Path(tmp), max(64, batch), num_classes=max(probe.label_dim, 1),
                             resolution=probe.img_resolution)
        options = [f"train_cfg.batch_size={batch}", f"train_cfg.batch_gpu={batch}", "train_cfg.max_iters=1000000",
                   "checkpoint.interval=1000000", f"data.train.path={data}", "data.train.num_workers=1", "hooks=[]",
                   "objective.importance_sampling=True"]
        cfg = load_config(str(ROOT / config), options, str(Path(tmp) / "work_dir"))
        cfg.model = model_cfg
        trainer, step = trainer_step(cfg)
        t = interleaved({"trainer": step, "bare": bare_step(trainer)}, args.ddpm_warmup, args.ddpm_rounds, steps)
        resampler = trainer.objective.resampler
        device = trainer.dist.device
        gen = torch.Generator(device).manual_seed(0)
        losses = torch.rand(batch, device=device)

        def resample() -> None:  # one step's resampler work: draw t, then record the step's (t, loss) pairs
            drawn, _ = resampler.sample(batch, device, gen)
            resampler.update(drawn, losses)

        t["resampler"] = statistics.median(time_steps(resample, 50) for _ in range(5))
        trainer.loader.close()
        trainer.writer.close()
    return {"model": model_cfg["type"], "preset": model_cfg["preset"], "resolution": probe.img_resolution,
            "batch": batch, "device": device.type, "threads": torch.get_num_threads(),
            "params_M": trainer.part_summary["model"][1] / 1e6, "steps_per_round": steps, "rounds": args.ddpm_rounds,
            "trainer_ms_per_step": 1e3 * t["trainer"], "bare_ms_per_step": 1e3 * t["bare"],
            "ratio": t["trainer"] / t["bare"], "target_ratio": 1.05,
            "resampler_ms_per_step": 1e3 * t["resampler"], "resampler_share": t["resampler"] / t["trainer"],
            "target_resampler_share": 0.01}


def _build_net(model_cfg: dict):
    from diffscale.registry import MODELS, build

    torch.manual_seed(0)
    return build(MODELS, model_cfg, "model")


def bench_sampler(args: argparse.Namespace) -> dict:
    from diffscale.sampling.ddpm import DDIMSampler, DDPMSampler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = _build_net(_model_cfg(args)).to(device).eval()
    B, S = args.ddpm_batch, args.ddpm_sampler_steps
    shape = (B, net.img_channels, net.img_resolution, net.img_resolution)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    labels = (torch.arange(B) % max(net.label_dim, 1)).to(device) if net.label_dim else None
    kw = dict(schedule="cosine", num_timesteps=1000, variance="learned_range" if net.learn_sigma else "fixed_small",
              num_steps=S)
    ddim, ddpm = DDIMSampler(**kw, eta=1.0), DDPMSampler(**kw)
    t_in = torch.full((B,), 500.0, device=device)

    @torch.no_grad()
    def forwards() -> None:
        for _ in range(S):
            net(noise, t_in, labels)

    fns = {"ddim": lambda: ddim(net, noise, labels), "ddpm": lambda: ddpm(net, noise, labels), "net": forwards}
    t = interleaved(fns, args.ddpm_warmup, args.ddpm_rounds, 1)
    return {"preset": args.ddpm_preset, "resolution": net.img_resolution, "batch": B, "steps": S,
            "device": device.type, "net_ms_per_step": 1e3 * t["net"] / S,
            "ddim_ms_per_step": 1e3 * t["ddim"] / S, "ddpm_ms_per_step": 1e3 * t["ddpm"] / S,
            "ddim_ratio": t["ddim"] / t["net"], "ddpm_ratio": t["ddpm"] / t["net"], "target_ratio": 1.05}


SUITES = {"ddpm_step": bench_step, "uvit_step": bench_uvit_step, "ddpm_sampler": bench_sampler}
