#!/usr/bin/env python
"""tools/benchmark.py [--suite NAME ...] [--out FILE.json]: hot-path benchmarks, measured in one run,
printed as a table and written as JSON. Ratios compare runs interleaved in the same process.

Each module in tools/benchmarks/ exports SUITES = {name: fn(args) -> dict of figures} and may export
add_arguments(parser) for its own options. Suites (see each module's docstring for targets):
  toy.py         trainer (trainer step vs a bare PyTorch loop), ajest (AJEST step vs baseline and ideal),
                 jest (JEST selection vs the B x B textbook implementation)
  data.py        loader (MDS shard loader throughput)
  edm2.py        EDM2 step in the trainer vs bare, and GPU throughput / MFU when a GPU is present
  evaluation.py  features (feature-extraction throughput of the evaluation networks)
  dmd2.py        dmd2 (a DMD2 toy cycle in the trainer vs the sum of its forward and backward passes)
  ddpm.py        ddpm_step (DDPM U-Net step in the trainer vs bare, resampler share), uvit_step (the same for
                 U-ViT), ddpm_sampler (DDIM / DDPM sampling step vs the network's forward)
  deediff.py     deediff_exit (DDIM sampling with real / simulated / no early exit vs the plain network; realised
                 vs ideal FLOP saving)
  flow.py        flow_step (FlowDiT DiT-B/2 step in the trainer vs bare), flow_gpu (bf16 img/s and MFU with SDPA,
                 xformers and torch.compile; CUDA only), flow_encode (tools/encode_latents.py's loop vs the VAE
                 encoder's forward)
  distill.py     dmd2_step (a DMD2 CIFAR-10 iteration on a shrunk EDM DDPM++ in the trainer vs the passes and
                 optimizer steps it must do; --dmd2-gan adds DMD2's GAN head), one_step_vs_heun (one-step
                 generation vs the teacher's 35-NFE Heun sampling on the same network: img/s and speedup)
"""

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MODULES = [p.stem for p in sorted((ROOT / "tools" / "benchmarks").glob("*.py")) if p.stem not in ("__init__", "common")]


def _suites() -> tuple[dict, list]:
    suites, modules = {}, []
    for name in MODULES:
        module = importlib.import_module(f"tools.benchmarks.{name}")
        suites.update(module.SUITES)
        modules.append(module)
    return suites, modules


def main(argv: list[str] | None = None) -> int:
    suites, modules = _suites()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", nargs="+", choices=sorted(suites), default=sorted(suites))
    p.add_argument("--batch", type=int, default=4096, help="toy batch (the toy config's default)")
    p.add_argument("--superbatch", type=int, default=16384, help="super-batch size B for the jest suite")
    p.add_argument("--steps", type=int, default=50, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default="work_dirs/benchmark/benchmark.json")
    for module in modules:
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    args = p.parse_args(argv)
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
                    or "cpu"},
    }
    for name in args.suite:
        results[name] = suites[name](args)
    print(f"{'suite':<10} {'metric':<26} {'value':>12}")
    for name in args.suite:
        for key, value in results[name].items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"{name:<10} {key:<26} {text:>12}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
