"""Evaluation suite: feature-extraction throughput of each evaluation network (untrained, same architecture and
input size as the real one) and the time a 50k-sample evaluation would take from it.

features: images/s on the CPU in fp32 (and on CUDA in bf16 when a GPU is present) for Inception-v3 (FID),
DINOv2 ViT-L/14 at 224 px (FD-DINOv2), Swin-L at 384 px (classifier) and CLIP ViT-L/14 at 336 px (CMMD); the
Frechet distance at 2048 and 1024 dimensions; CMMD's kernel sums extrapolated to 50k x 50k; and from these the
estimated time to evaluate 50k samples with all four on one device (sampling not included). The CPU default is
short: a ViT-L forward takes seconds per image there.
"""

import argparse

import numpy as np
import torch

from tools.benchmarks.common import time_steps

NETWORKS = {  # short name -> (evaluator class name, extra arguments)
    "inception": ("FID", {}),
    "dinov2_l14": ("FDDINOv2", {}),
    "swin_l_384": ("ClassifierAccuracy", {}),
    "clip_l14_336": ("CMMD", {}),
}
NUM_SAMPLES = 50_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-cpu-batch", type=int, default=2, help="features: images per forward on the CPU")
    p.add_argument("--eval-cpu-steps", type=int, default=1, help="features: timed forwards per network on the CPU")
    p.add_argument("--eval-gpu-batch", type=int, default=128, help="features: images per forward on CUDA")
    p.add_argument("--eval-gpu-steps", type=int, default=5, help="features: timed forwards per network on CUDA")
    p.add_argument("--eval-networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS),
                   help="features: which networks")


def _throughput(evaluator, batch: int, steps: int) -> float:
    """Images per second of evaluator.features on uint8 64x64 images (the Tiny ImageNet size), after one warm-up."""
    images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8, device=evaluator.device)
    evaluator.features(images)  # builds the network, warms up kernels
    return batch / time_steps(lambda: evaluator.features(images), steps)


def _frechet_s(dim: int) -> float:
    from diffscale.evaluation.fid import frechet_distance

    x = np.random.default_rng(0).standard_normal((dim + 16, dim))
    cov = np.cov(x, rowvar=False)
    return time_steps(lambda: frechet_distance(np.zeros(dim), cov, np.ones(dim), cov), 1)


def _cmmd_kernel_s(device: torch.device, block: int = 2048, dim: int = 768) -> float:
    """Seconds for CMMD's three kernel sums at 50k generated and 50k reference embeddings, from one block."""
    from diffscale.evaluation.cmmd import rbf_kernel_sum

    a = torch.nn.functional.normalize(torch.randn(block, dim, device=device), dim=1)
    per_entry = time_steps(lambda: rbf_kernel_sum(a, a, 10.0), 1) / block**2
    return per_entry * 3 * NUM_SAMPLES**2  # x-x, y-y and x-y entries


def _device_figures(device: torch.device, precision: str, batch: int, steps: int, names: list[str]) -> dict:
    from diffscale.registry import EVALUATORS, build

    tag = f"{device.type}_{precision}"
    out, total_s = {}, 0.0
    for name in names:
        cls_name, extra = NETWORKS[name]
        evaluator = build(EVALUATORS, dict(type=cls_name, random_weights=True, precision=precision, **extra),
                          "features", device=device)
        ips = _throughput(evaluator, batch, steps)
        out[f"{name}_{tag}_img_per_s"] = ips
        total_s += NUM_SAMPLES / ips
        del evaluator
    total_s += _cmmd_kernel_s(device)
    out[f"est_50k_all_{tag}_h"] = (total_s + _frechet_s(2048) + _frechet_s(1024)) / 3600
    return out


def bench_features(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    names = args.eval_networks
    out = {"frechet_2048_s": _frechet_s(2048), "frechet_1024_s": _frechet_s(1024)}
    out.update(_device_figures(torch.device("cpu"), "fp32", args.eval_cpu_batch, args.eval_cpu_steps, names))
    if torch.cuda.is_available():
        out.update(_device_figures(torch.device("cuda"), "bf16", args.eval_gpu_batch, args.eval_gpu_steps, names))
    return out


SUITES = {"features": bench_features}
