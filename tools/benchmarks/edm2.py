"""EDM2 suites: the trainer's overhead on a real EDM2 step, and GPU throughput / model FLOPs utilisation.

edm2_step  EDM2UNet `--edm2-preset` (tiny-xxs) at `--edm2-batch` (16), fp32, inside the Trainer built from
           configs/ajest/edm2_xs_tiny_baseline.py (data: a synthetic 64x64 MDS dataset written by the real
           converter into a temporary folder) against a bare PyTorch step of the same network: same model config
           and seed, EDMLoss, Adam, batches from the trainer's own loader. Both run without EMA: `hooks=[]`, so
           the trainer keeps only its built-in logger and checkpoint hooks (which save never here). EMA is a
           feature the bare loop does not have; its cost is reported separately as `ema_ms_per_step` (the
           baseline config's two power-function averages). Interleaved rounds (A B, B A, ...), medians. Target
           ratio <= 1.05. `ratio_from_extras` = 1 + (what the trainer adds, timed alone) / bare step: the same
           question answered without the noise of two long timings on a shared machine.
edm2_gpu   CUDA only (else {"skipped": ...}): bf16-autocast training of `--edm2-gpu-preset` (tiny-xs) at
           `--edm2-gpu-batch` (256) on random data, a bare step of EDM2Precond + EDMLoss + Adam (+ EDM2's forced
           weight normalisation after it), in four variants: eager / torch.compile, each NCHW / channels_last.
           Reports img/s, MFU = 3 x forward FLOPs per image (diffscale/evaluation/flops.py, counted on the CPU)
           x img/s / the GPU's dense bf16 peak, the first step's time (compilation included), peak memory and,
           compiled, dynamo's graph-break count. Warm-up steps are not timed; a failing variant (OOM, compiler
           error) is reported as `<variant>_error` and the others still run.
On a GPU machine edm2_step runs on the GPU too (same code and precision).
"""

import argparse
import gc
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tools.benchmarks.common import time_steps, trainer_step

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/ajest/edm2_xs_tiny_baseline.py"
LR_REF = {"tiny-xxs": 0.0170, "tiny-xs": 0.0120}  # AJEST Tiny ImageNet presets (schedules/edm2_tiny_2048.py)
# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from NVIDIA's datasheets; matched as substrings of
# torch.cuda.get_device_name(), most specific first. `--edm2-peak-tflops` overrides.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--edm2-preset", default="tiny-xxs", help="edm2_step: EDM2UNet preset")
    p.add_argument("--edm2-batch", type=int, default=16, help="edm2_step: batch_size = batch_gpu")
    # A tiny-xxs step at batch 16 takes 14-50 s on a shared 2-core CPU: steps are few, rounds short.
    p.add_argument("--edm2-steps", type=int, default=1, help="edm2_step: steps per timed round")
    p.add_argument("--edm2-rounds", type=int, default=6, help="edm2_step: interleaved rounds (median)")
    p.add_argument("--edm2-warmup", type=int, default=2, help="edm2_step: untimed steps of each loop first")
    p.add_argument("--edm2-images", type=int, default=256, help="edm2_step: synthetic 64x64 images in the dataset")
    p.add_argument("--edm2-workers", type=int, default=1, help="edm2_step: DataLoader workers of the loader")
    p.add_argument("--edm2-gpu-preset", default="tiny-xs", help="edm2_gpu: EDM2UNet preset")
    p.add_argument("--edm2-gpu-batch", type=int, default=256, help="edm2_gpu: batch_gpu")
    p.add_argument("--edm2-gpu-steps", type=int, default=20, help="edm2_gpu: timed steps per variant")
    p.add_argument("--edm2-gpu-warmup", type=int, default=5, help="edm2_gpu: untimed steps (compilation) first")
    p.add_argument("--edm2-peak-tflops", type=float, default=None,
                   help="edm2_gpu: the GPU's dense bf16 peak in TFLOP/s (default: looked up by device name)")


# ---------------------------------------------------------------------------------------------- edm2_step
def synthetic_mds(root: Path, num_images: int, num_classes: int = 200, resolution: int = 64) -> Path:
    """Random RGB images with labels, written as MDS by the real converter; returns the dataset folder."""
    from diffscale.data.converters import convert

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, resolution, resolution, 3), dtype=np.uint8)  # NHWC
    np.savez(root / "synthetic.npz", images=images, labels=rng.integers(0, num_classes, num_images))
    return convert("npz", root / "synthetic.npz", root / "mds", progress=False).out_dir


def edm2_trainer(args: argparse.Namespace, data: Path, work_dir: Path):
    """(Trainer, step()) for the baseline config at the benchmark's preset and batch; step() is one optimizer
    step and the hooks' after_step, as in Trainer.train."""

    from diffscale.config import load_config

    batch, preset = args.edm2_batch, args.edm2_preset
    options = [f"model.net.preset={preset}", f"train_cfg.batch_size={batch}", f"train_cfg.batch_gpu={batch}",
               "train_cfg.precision=fp32", "train_cfg.max_iters=1000000", "checkpoint.interval=1000000",
               f"data.train.path={data}", f"data.train.num_workers={args.edm2_workers}", "hooks=[]"]
    if preset in LR_REF:
        options.append(f"optimizer.lr={LR_REF[preset]}")
    cfg = load_config(str(ROOT / CONFIG), options, str(work_dir))
    return trainer_step(cfg)


def bare_step(trainer) -> Callable[[], None]:
    """The bare loop's step: the trainer's model config, seed, objective, optimizer config and loader; nothing
    else (no grad norm, finite check, forced weight normalisation after the step, or hooks). The in-forward
    forced weight normalisation of EDM2 (models/layers/mp.py) runs in both, as in EDM2's own training loop."""
    from diffscale.config import part_specs
    from diffscale.engine.precision import autocast
    from diffscale.registry import MODELS, OBJECTIVES, OPTIMIZERS, build

    cfg, device = trainer.cfg, trainer.dist.device
    spec = part_specs(cfg)[trainer.objective.score_part]  # the one-part shorthand or the scored part of `parts`
    torch.manual_seed(cfg.train_cfg.seed)
    model = build(MODELS, spec["model"], "model").to(device)
    objective = build(OBJECTIVES, cfg.objective, "objective")
    optimizer = build(OPTIMIZERS, dict(spec["optimizer"]), "optimizer", params=list(model.parameters()))
    generator = torch.Generator(device).manual_seed(1)

    def step() -> None:
        batch = next(trainer.loader)
        with autocast(trainer.precision, device):
            loss = objective.per_example(model, batch, objective.sample_condition(batch["x"], generator)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved(fns: dict[str, Callable[[], None]], warmup: int, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each fn over `rounds` rounds of `steps` calls. The fns take turns within each
    round, in reversed order every other round (A B, B A, ...), so that drift in machine speed (a shared
    machine) hits all alike and neither always runs first."""
    for fn in fns.values():
        time_steps(fn, warmup)
    seconds = {name: [] for name in fns}
    for r in range(rounds):
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            seconds[name].append(time_steps(fns[name], steps))
    return {name: statistics.median(s) for name, s in seconds.items()}


def bench_step(args: argparse.Namespace) -> dict:
    from diffscale.engine.ema import ParamEMA

    batch, steps = args.edm2_batch, args.edm2_steps
    with tempfile.TemporaryDirectory(prefix="diffscale-bench-edm2-") as tmp:
        data = synthetic_mds(Path(tmp), max(args.edm2_images, batch))
        trainer, trainer_step = edm2_trainer(args, data, Path(tmp) / "work_dir")
        t = interleaved({"trainer": trainer_step, "bare": bare_step(trainer)}, args.edm2_warmup, args.edm2_rounds,
                        steps)
        # What the trainer adds to the bare step, timed alone: forced weight normalisation after the optimizer
        # step, and the gradient norm with its finite check (one host sync). On a noisy machine their sum
        # predicts the ratio more steadily than the ratio of two long timings.
        module = trainer.strategy.module("model")
        t["force_wn"] = statistics.median(time_steps(module.force_weight_norm_, steps) for _ in range(3))
        grads = {"model": [torch.zeros_like(p) for p in module.parameters()]}
        check = lambda: trainer.strategy.grad_norms(grads).isfinite().all().item()
        t["grad_check"] = statistics.median(time_steps(check, steps) for _ in range(3))
        params = lambda: trainer.strategy.param_tensors("model")
        ema = ParamEMA(params(), ["pf_0.050", "pf_0.100"])
        ema_update = lambda: ema.update(params(), {"pf_0.050": 0.99, "pf_0.100": 0.999})
        t["ema"] = statistics.median(time_steps(ema_update, steps) for _ in range(3))
        trainer.loader.close()
        trainer.writer.close()
    return {
        "preset": args.edm2_preset, "batch": batch, "precision": trainer.precision,
        "device": trainer.dist.device.type, "threads": torch.get_num_threads(),
        "params_M": trainer.part_summary["model"][1] / 1e6,
        "steps_per_round": steps, "rounds": args.edm2_rounds,
        "trainer_ms_per_step": 1e3 * t["trainer"], "bare_ms_per_step": 1e3 * t["bare"],
        "ratio": t["trainer"] / t["bare"], "target_ratio": 1.05,
        "img_per_s": batch / t["trainer"], "bare_img_per_s": batch / t["bare"],
        "force_wn_ms": 1e3 * t["force_wn"], "grad_norm_check_ms": 1e3 * t["grad_check"],
        "ratio_from_extras": 1 + (t["force_wn"] + t["grad_check"]) / t["bare"], "ema_ms_per_step": 1e3 * t["ema"],
    }


# ---------------------------------------------------------------------------------------------- edm2_gpu
def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """The dense bf16 peak (FLOP/s) of `device_name`: the override, else PEAK_BF16_FLOPS' first key found in the
    name (keys are tried in order, most specific first), else None (MFU is then not reported)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in device_name), None)


def train_flops_per_image(preset: str, resolution: int = 64, **net_overrides) -> float:
    """FLOPs of one training image: 3 x the forward (the backward costs two forwards: gradients with respect to
    the activations and to the weights). The forward is EDM2Precond's, counted by fvcore on the CPU at batch 1
    (on the CPU the attention is SDPA, which flops.py counts; a CUDA trace might take xformers' kernel)."""
    from diffscale.diffusion.edm import EDM2Precond
    from diffscale.evaluation.flops import forward_flops
    from diffscale.models.edm2_unet import EDM2UNet

    torch.manual_seed(0)
    model = EDM2Precond(EDM2UNet(preset, img_resolution=resolution, **net_overrides))
    x = torch.randn(1, model.net.img_channels, resolution, resolution)
    labels = torch.zeros(1, dtype=torch.long) if model.label_dim else None
    return 3.0 * forward_flops(model, (x, torch.ones(1), labels))


def time_training(preset: str, batch: int, device: torch.device, compile_model: bool, channels_last: bool,
                  steps: int, warmup: int, **net_overrides) -> dict:
    """Seconds per bf16-autocast training step (EDM2Precond + EDMLoss(sum) + Adam + forced weight normalisation)
    on one random batch x[batch, C, H, W] (fresh sigma and noise each step), after `warmup` untimed steps; and
    the first step's seconds (torch.compile compiles there: forward and backward graphs).

    EDM2's forced weight normalisation (eq. 66) runs after the optimizer step (`force_weight_norm_`, as the
    trainer does), not in the forward: there it copies into the parameters, which torch.compile cannot trace
    (a graph break in every MPConv). Both places give the same weights at every forward."""
    from diffscale.diffusion.edm import EDM2Precond, EDMLoss
    from diffscale.models.edm2_unet import EDM2UNet
    from diffscale.models.layers.mp import MPConv

    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = EDM2Precond(EDM2UNet(preset, **net_overrides)).to(device, memory_format=memory_format)
    for m in model.modules():
        if isinstance(m, MPConv):
            m.force_wn = False  # the logvar head's too, which EDM2UNet(force_wn=False) would not reach
    forward = torch.compile(model) if compile_model else model
    objective = EDMLoss(P_mean=-0.4, P_std=1.0, sigma_data=0.5, learned_logvar=True, reduction="sum")
    optimizer = torch.optim.Adam(model.parameters(), lr=LR_REF.get(preset, 0.0120), betas=(0.9, 0.99))
    generator = torch.Generator(device).manual_seed(0)
    res, channels = model.net.img_resolution, model.net.img_channels
    x = torch.randn(batch, channels, res, res, device=device, generator=generator)
    data = {"x": x.contiguous(memory_format=memory_format)}
    if model.label_dim:
        data["label"] = torch.randint(0, model.label_dim, (batch,), device=device, generator=generator)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = objective.per_example(forward, data, objective.sample_condition(data["x"], generator)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.force_weight_norm_()

    first_s = time_steps(step, 1)
    time_steps(step, max(warmup - 1, 0))
    return {"step_s": time_steps(step, steps), "first_step_s": first_s}


def gpu_variant(args: argparse.Namespace, compile_model: bool, channels_last: bool, flops_per_image: float,
                peak: float | None) -> dict:
    """The figures of one edm2_gpu variant, named without the variant's prefix."""
    from torch._dynamo.utils import counters

    batch = args.edm2_gpu_batch
    torch.cuda.reset_peak_memory_stats()
    counters.clear()
    t = time_training(args.edm2_gpu_preset, batch, torch.device("cuda"), compile_model, channels_last,
                      args.edm2_gpu_steps, args.edm2_gpu_warmup)
    figures = {"img_per_s": batch / t["step_s"], "ms_per_step": 1e3 * t["step_s"]}
    if peak:
        figures["mfu"] = flops_per_image * batch / t["step_s"] / peak
    figures["first_step_s"] = t["first_step_s"]
    figures["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if compile_model:  # each break splits the graph (less fusion): 0 is what compile needs to pay off
        figures["graph_breaks"] = sum(counters["graph_break"].values())
    return figures


def bench_gpu(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    name = torch.cuda.get_device_name()
    peak = peak_flops(name, args.edm2_peak_tflops)
    flops_per_image = train_flops_per_image(args.edm2_gpu_preset)
    results = {"gpu": name, "preset": args.edm2_gpu_preset, "batch_gpu": args.edm2_gpu_batch,
               "train_gflops_per_img": flops_per_image / 1e9,
               "peak_tflops": peak / 1e12 if peak else "unknown (--edm2-peak-tflops)"}
    for compile_model in (False, True):
        for channels_last in (False, True):
            key = ("compiled" if compile_model else "eager") + ("_cl" if channels_last else "")
            try:
                figures = gpu_variant(args, compile_model, channels_last, flops_per_image, peak)
                results.update({f"{key}_{k}": v for k, v in figures.items()})
            except Exception as exc:  # one variant failing (OOM, a compiler error) must not lose the others
                results[f"{key}_error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            finally:  # the variant's model, optimizer state and graphs go before the next starts
                torch._dynamo.reset()  # and each compiled variant compiles from scratch (first_step_s)
                gc.collect()
                torch.cuda.empty_cache()
    return results


SUITES = {"edm2_step": bench_step, "edm2_gpu": bench_gpu}
