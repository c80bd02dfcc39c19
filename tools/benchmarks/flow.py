"""Rectified-flow suites: the trainer's overhead on a FlowDiT step, GPU throughput and MFU, latent encoding.

flow_step    FlowDiT `--flow-preset` (dit_b2: DiT-B/2, 130M parameters, 4x32x32 latents) at `--flow-batch` (4), fp32,
             inside the Trainer built from configs/flow/dit_b2_imagenet256.py (the flow objective with label dropout;
             data: random 4x32x32 latents written by the real converter; the VAE part and hooks left out) against a
             bare PyTorch step of the same network (RectifiedFlowLoss.per_example, AdamW, the trainer's own loader).
             Interleaved rounds, medians; target ratio <= 1.05.
flow_gpu     On a CUDA device only: bf16 training steps of `--flow-gpu-presets` (dit_b2 dit_xl2) at
             `--flow-gpu-batch` (64) with torch SDPA, with xformers (when it loads) and with torch.compile; img/s and
             MFU = 3 x forward FLOPs x img/s / peak (FLOPs = 2 x fvcore multiply-adds, attention included; peak:
             `--peak-tflops`, else the device's dense bf16 figure). Target MFU >= 40%.
flow_encode  tools/encode_latents.py's encoding loop (diffscale/data/latents.py: batches of images, their flips,
             the posterior moments to float32 host arrays) against the VAE encoder's forward alone on the same
             batches, SD-VAE architecture with random weights at `--encode-resolution` (64; 256 on a GPU), batch
             `--encode-batch`; target ratio (tool throughput / encoder throughput) >= 0.9. `whole_ratio`: the same
             for the whole tool on a generated image folder (PNG decoding, writing the parts, the read-back check).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from tools.benchmarks.common import time_steps, trainer_step
from tools.benchmarks.edm2 import bare_step, interleaved

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/flow/dit_b2_imagenet256.py"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "4090": 165.0}  # dense, no sparsity (vendor data sheets)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow-preset", default="dit_b2", help="flow_step: FlowDiT preset")
    p.add_argument("--flow-batch", type=int, default=4, help="flow_step: batch_size = batch_gpu")
    p.add_argument("--flow-steps", type=int, default=2, help="flow_step: steps per timed round")
    p.add_argument("--flow-rounds", type=int, default=6, help="flow_*: interleaved rounds (median)")
    p.add_argument("--flow-warmup", type=int, default=2, help="flow_*: untimed calls of each first")
    p.add_argument("--flow-gpu-presets", nargs="+", default=["dit_b2", "dit_xl2"], help="flow_gpu: presets")
    p.add_argument("--flow-gpu-batch", type=int, default=64, help="flow_gpu: batch per step")
    p.add_argument("--peak-tflops", type=float, default=None, help="flow_gpu: the device's peak bf16 TFLOPS")
    p.add_argument("--encode-resolution", type=int, default=None, help="flow_encode: image size (64 CPU, 256 GPU)")
    p.add_argument("--encode-batch", type=int, default=4, help="flow_encode: images per batch")


def latent_mds(root: Path, num: int, num_classes: int, shape: tuple[int, int, int]) -> Path:
    """Random float latents [num, C, H, W] with labels, written as MDS by the real converter (npz source)."""
    from diffscale.data.converters import convert

    rng = np.random.default_rng(0)
    latents = rng.standard_normal((num, *shape), dtype=np.float32)
    np.savez(root / "latents.npz", x=latents, labels=rng.integers(0, num_classes, num))
    return convert("npz", root / "latents.npz", root / "mds", progress=False).out_dir


def bench_step(args: argparse.Namespace) -> dict:
    from diffscale.config import load_config
    from diffscale.registry import MODELS, build

    batch, steps = args.flow_batch, args.flow_steps
    model_cfg = dict(type="FlowDiT", preset=args.flow_preset)
    torch.manual_seed(0)
    probe = build(MODELS, model_cfg, "model")
    shape = (probe.img_channels, probe.img_resolution, probe.img_resolution)
    with tempfile.TemporaryDirectory(prefix="diffscale-bench-flow-") as tmp:
        data = latent_mds(Path(tmp), max(64, batch), max(probe.label_dim, 1), shape)
        options = [f"train_cfg.batch_size={batch}", f"train_cfg.batch_gpu={batch}", "train_cfg.max_iters=1000000",
                   "train_cfg.precision=fp32", "checkpoint.interval=1000000", f"data.train.path={data}",
                   "data.train.latents=False", "data.train.num_workers=1", "hooks=[]"]
        cfg = load_config(str(ROOT / CONFIG), options, str(Path(tmp) / "work_dir"))
        # One part: the network (the frozen VAE decoder only matters for sampling, and needs its weight files).
        cfg.parts = {"model": dict(cfg.parts["model"], model=model_cfg)}
        trainer, step = trainer_step(cfg)
        t = interleaved({"trainer": step, "bare": bare_step(trainer)}, args.flow_warmup, args.flow_rounds, steps)
        trainer.loader.close()
        trainer.writer.close()
    return {"preset": args.flow_preset, "latent_shape": list(shape), "batch": batch,
            "device": trainer.dist.device.type, "threads": torch.get_num_threads(),
            "params_M": trainer.part_summary["model"][2] / 1e6, "steps_per_round": steps, "rounds": args.flow_rounds,
            "trainer_ms_per_step": 1e3 * t["trainer"], "bare_ms_per_step": 1e3 * t["bare"],
            "ratio": t["trainer"] / t["bare"], "target_ratio": 1.05}


def _peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _train_step(fn, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
    """One bf16 training step of `fn` (the network or its compiled version) on a fixed batch."""

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (fn(x, t, y).float() - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _gpu_preset(args: argparse.Namespace, preset: str, peak: float | None) -> dict:
    """img/s and MFU of one preset with SDPA, xformers (when it loads) and torch.compile."""
    from diffscale.evaluation.flops import forward_flops
    from diffscale.models.layers import attention as A
    from diffscale.registry import MODELS, build

    torch.manual_seed(0)
    net = build(MODELS, dict(type="FlowDiT", preset=preset), "model").cuda()
    B, C, R = args.flow_gpu_batch, net.img_channels, net.img_resolution
    x = torch.randn(B, C, R, R, device="cuda")
    t = torch.rand(B, device="cuda")
    y = torch.randint(0, max(net.label_dim, 1), (B,), device="cuda")
    with A.prefer("sdpa"):
        flops_per_img = forward_flops(net, (x[:1], t[:1], y[:1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    variants = {"sdpa": (net, "sdpa")}
    if A.xformers_usable(torch.bfloat16):
        variants["xformers"] = (net, None)
    variants["compile_sdpa"] = (torch.compile(net), "sdpa")
    out = {f"{preset}_gflops_per_img": flops_per_img / 1e9}
    for name, (fn, backend) in variants.items():
        step = _train_step(fn, opt, x, t, y)
        with A.prefer(backend):
            time_steps(step, args.flow_warmup + 2)  # compilation and autotuning stay outside the timing
            seconds = min(time_steps(step, 5) for _ in range(args.flow_rounds))
        out[f"{preset}_{name}_img_per_s"] = B / seconds
        if peak:
            out[f"{preset}_{name}_mfu"] = 3 * flops_per_img * (B / seconds) / (peak * 1e12)
    return out


def bench_gpu(args: argparse.Namespace) -> dict:
    """bf16 img/s and MFU per preset and attention backend (see the module docstring)."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    peak = _peak_tflops(args)
    out: dict = {"device": torch.cuda.get_device_name(), "peak_bf16_tflops": peak, "batch": args.flow_gpu_batch}
    for preset in args.flow_gpu_presets:
        out.update(_gpu_preset(args, preset, peak))
        torch.cuda.empty_cache()
    out["target_mfu"] = 0.40
    return out


def bench_encode(args: argparse.Namespace) -> dict:
    """The encoding tool's loop against the bare encoder forward (see the module docstring)."""
    from diffscale.data.latents import encode_batches
    from diffscale.models.sd_vae import SDVAE

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolution = args.encode_resolution or (256 if device.type == "cuda" else 64)
    vae = SDVAE(random_init=True, parts="encoder").to(device).eval()
    B = args.encode_batch
    images = np.random.default_rng(0).integers(0, 256, (B, 3, resolution, resolution), dtype=np.uint8)
    x = torch.from_numpy(images).to(device).float() / 127.5 - 1
    x2 = torch.cat([x, x.flip(-1)])  # each image and its mirror, as the tool encodes them

    @torch.inference_mode()
    def bare() -> None:  # the encoder alone on the same 2B images already on the device, same precision
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            mean, _ = vae.encode_moments(x2)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def tool() -> None:  # uint8 host batch in, float32 host moments out
        next(encode_batches(vae, [images], device))

    t = interleaved({"tool": tool, "bare": bare}, args.flow_warmup, args.flow_rounds, 1)
    whole = _whole_tool(vae, resolution, B, device)
    return {"resolution": resolution, "batch": B, "device": device.type, "threads": torch.get_num_threads(),
            "tool_img_per_s": B / t["tool"], "encoder_img_per_s": B / t["bare"],
            "ratio": t["bare"] / t["tool"], "whole_tool_img_per_s": whole, "whole_ratio": whole * t["bare"] / B,
            "target_ratio": 0.9}


def _whole_tool(vae, resolution: int, batch: int, device: torch.device) -> float:
    """Images per second of the whole tool (decode PNGs and centre-crop in a thread, encode, write MDS parts, read
    back and check) on 4 batches of a generated image folder, the VAE already built (as the tool builds it once)."""
    import time

    from PIL import Image

    from diffscale.data.latents import encode_latents

    num = 4 * batch
    with tempfile.TemporaryDirectory(prefix="diffscale-bench-encode-") as tmp:
        rng = np.random.default_rng(0)
        for k in range(num):
            folder = Path(tmp) / "images" / f"c{k % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        t0 = time.perf_counter()
        encode_latents("imagefolder", Path(tmp) / "images", Path(tmp) / "out", resolution=resolution, batch=batch,
                       random_vae=True, device=device, progress=False, vae=vae)
        return num / (time.perf_counter() - t0)


SUITES = {"flow_step": bench_step, "flow_gpu": bench_gpu, "flow_encode": bench_encode}
