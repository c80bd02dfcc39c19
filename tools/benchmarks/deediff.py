"""DeeDiff early-exit suite: does removing exited rows from the batch turn the FLOPs the recorded exits save into
wall-clock?

deediff_exit  One EarlyExitDDIMSampler call (`--deediff-steps` (10) DDIM steps, eta 0) at `--deediff-batch` (64)
              on a randomly initialised DeeDiffUViT: preset `--deediff-preset` (tiny) with `--deediff-embed-dim`
              (96), `--deediff-depth` (13), `--deediff-heads` (4) and `--deediff-resolution` (16) replacing the
              preset's (0 keeps it): at the tiny preset's own width per-layer Python overhead, not FLOPs, sets the
              time on a CPU. Four samplers, interleaved rounds, medians:
                plain      DDIMSampler on the network's forward (no probes, no exit heads): the baseline
                no_exit    the early-exit sampler at threshold 0 (every probe runs; every sample leaves at the head)
                simulated  simulate=True at the threshold (the whole network, every head and probe, on every row)
                real       real exit at the threshold (exited rows leave the batch)
              ideal_saving = 1 - (mean GFLOPs of the recorded exits) / (plain network GFLOPs), from
              evaluation/flops.py's per-exit table (attention matmuls included); realised_saving = 1 - real / plain;
              target realised_saving / ideal_saving >= 0.8 (batch 64, CPU). removal_over_ideal is the same
              against no_exit and the table's full-network-with-probes cost (the removal's efficiency alone).

Exits with random weights. An untrained probe's logit has a large offset of its own and varies little between
samples, so the benchmark calibrates the attention probes once, on the benchmark's noise at the first step's
timestep: probe i's last Linear is rescaled and its bias set so that its logit has mean
ramp * (1 - 2 i / (depth - 1)) and std `--deediff-spread` (1) over the batch; ramp `--deediff-ramp` (4) runs from
+4 at exit 0 (u = sigmoid(4) = 0.98) to -4 at the last exit. At threshold `--deediff-threshold` (0.5, logit 0)
samples leave around the middle layers, each at its own layer and step. The recorded exits, not this design,
give the ideal saving.
"""

import argparse

import torch

from tools.benchmarks.edm2 import interleaved


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deediff-preset", default="tiny", help="deediff_exit: DeeDiffUViT preset")
    p.add_argument("--deediff-embed-dim", type=int, default=96, help="deediff_exit: token width (0: the preset's)")
    p.add_argument("--deediff-depth", type=int, default=13, help="deediff_exit: layers, odd (0: the preset's)")
    p.add_argument("--deediff-heads", type=int, default=4, help="deediff_exit: attention heads (0: the preset's)")
    p.add_argument("--deediff-resolution", type=int, default=16, help="deediff_exit: image side (0: the preset's)")
    p.add_argument("--deediff-batch", type=int, default=64, help="deediff_exit: samples per sampling call")
    p.add_argument("--deediff-steps", type=int, default=10, help="deediff_exit: DDIM steps per call")
    p.add_argument("--deediff-threshold", type=float, default=0.5, help="deediff_exit: exit when u <= this")
    p.add_argument("--deediff-spread", type=float, default=1.0, help="deediff_exit: std of each probe logit")
    p.add_argument("--deediff-ramp", type=float, default=4.0, help="deediff_exit: mean probe logit, +ramp to -ramp")
    p.add_argument("--deediff-rounds", type=int, default=3, help="deediff_exit: interleaved rounds (median)")
    p.add_argument("--deediff-warmup", type=int, default=1, help="deediff_exit: untimed calls of each first")


def build_net(args: argparse.Namespace):
    """The randomly initialised DeeDiffUViT (attention probes), in eval mode."""
    from diffscale.models.deediff import DeeDiffUViT

    overrides = {"embed_dim": args.deediff_embed_dim, "depth": args.deediff_depth,
                 "num_heads": args.deediff_heads, "img_resolution": args.deediff_resolution}
    torch.manual_seed(0)
    return DeeDiffUViT(args.deediff_preset, classifier_type="attention_probe",
                       **{k: v for k, v in overrides.items() if v}).eval()


@torch.no_grad()
def calibrate_probes(net, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, spread: float,
                     ramp: float) -> None:
    """Probe i's logit on (x, t, labels) gets mean ramp * (1 - 2 i / (depth - 1)) and std `spread` over the
    batch: its last Linear is rescaled and its bias set (module docstring)."""
    lasts = [probe.classification[-1] for probe in net.probes]
    seen: dict[int, torch.Tensor] = {}

    def keep(i: int):
        return lambda m, inputs, out: seen.__setitem__(i, (out[:, 0] - m.bias).double())

    hooks = [m.register_forward_hook(keep(i)) for i, m in enumerate(lasts)]
    net.forward_exits(x, t, labels)
    for h in hooks:
        h.remove()
    for i, last in enumerate(lasts):
        scale = spread / max(float(seen[i].std()), 1e-12)
        last.weight.mul_(scale)
        last.bias.fill_(ramp * (1 - 2 * i / max(net.depth - 1, 1)) - scale * float(seen[i].mean()))


def bench_exit(args: argparse.Namespace) -> dict:
    from diffscale.evaluation.flops import exit_cost_summary, exit_gflops_table
    from diffscale.sampling.ddpm import DDIMSampler
    from diffscale.sampling.early_exit import EarlyExitDDIMSampler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build_net(args).to(device)
    B, S, threshold = args.deediff_batch, args.deediff_steps, args.deediff_threshold
    shape = (B, net.img_channels, net.img_resolution, net.img_resolution)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    labels = (torch.arange(B) % net.label_dim).to(device) if net.label_dim else None
    kw = dict(schedule="cosine", num_timesteps=1000, num_steps=S, variance="fixed_small")
    plain = DDIMSampler(**kw)
    t_first = plain.base.model_time(plain.tau[-1:]).to(device).expand(B)  # the first sampling step's model time
    calibrate_probes(net, noise, t_first, labels, args.deediff_spread, args.deediff_ramp)
    samplers = {"no_exit": EarlyExitDDIMSampler(0.0, **kw),
                "simulated": EarlyExitDDIMSampler(threshold, simulate=True, **kw),
                "real": EarlyExitDDIMSampler(threshold, **kw)}
    fns = {"plain": lambda: plain(net, noise, labels)}
    fns |= {name: (lambda s=s: s(net, noise, labels)) for name, s in samplers.items()}
    t = interleaved(fns, args.deediff_warmup, args.deediff_rounds, 1)

    real_x, sim_x = samplers["real"](net, noise, labels), samplers["simulated"](net, noise, labels)
    exits = samplers["real"].last_exits
    table, full = exit_gflops_table(net)
    cost = exit_cost_summary(exits, table, full)
    realised = 1 - t["real"] / t["plain"]
    return {"preset": args.deediff_preset, "embed_dim": net.embed_dim, "depth": net.depth,
            "resolution": net.img_resolution, "batch": B, "steps": S, "threshold": threshold,
            "device": device.type, "threads": torch.get_num_threads(),
            "plain_ms_per_step": 1e3 * t["plain"] / S, "no_exit_ms_per_step": 1e3 * t["no_exit"] / S,
            "simulated_ms_per_step": 1e3 * t["simulated"] / S, "real_ms_per_step": 1e3 * t["real"] / S,
            "plain_gflops": full, "exit_gflops_per_sample": cost["gflops_per_sample"],
            "layer_ratio": cost["layer_ratio"], "early_share": float((exits < net.depth).double().mean()),
            "distinct_exits": int(exits.unique().numel()),
            "real_vs_simulated_max_abs": float((real_x - sim_x).abs().max()),
            "exits_match": bool(torch.equal(exits, samplers["simulated"].last_exits)),
            "ideal_saving": cost["ideal_saving"], "realised_saving": realised,
            "realised_over_ideal": realised / cost["ideal_saving"] if cost["ideal_saving"] > 0 else float("nan"),
            "target_realised_over_ideal": 0.8,
            # The same against the no-exit path (every probe run): what removing rows alone realises, apart from
            # how fast the probes run next to the layers (their FLOPs are in both the table and the timing).
            "removal_over_ideal": (1 - t["real"] / t["no_exit"]) / (1 - cost["gflops_per_sample"] / table[-1])}


SUITES = {"deediff_exit": bench_exit}
