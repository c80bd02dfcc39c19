"""The DeeDiff early-exit report (tools/early_exit_report.py): sample a DeeDiff checkpoint with real early exit at
each threshold and without early exit, from the same seeds, and write report.md (layer ratio, GFLOPs per sample,
saving against the full network, sampling wall-clock with real and simulated exit, the config's evaluators, e.g.
CMMD and FID), metrics.json and exit_vs_timestep.png (the mean exit index at each sampling step).

GFLOPs are fvcore's (evaluation/flops.py: 2 x multiply-adds, attention matmuls included; the columns without
attention are the convention of the DeeDiff seed's ptflops table). The saving is 1 - GFLOPs per sample / the plain
network's. Wall-clock: one sampling call on the first `batch` samples, timed alone for each mode.
"""

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from diffscale.errors import ConfigError  # noqa: E402
from diffscale.evaluation import toy_report as R  # noqa: E402
from diffscale.evaluation.flops import exit_cost_summary, exit_gflops_table  # noqa: E402
from diffscale.evaluation.pipeline import (  # noqa: E402
    build_evaluators,
    check_inputs,
    load_ref,
    load_sampling_nets,
    run_evaluation,
    test_settings,
)
from diffscale.registry import SAMPLERS, build  # noqa: E402
from diffscale.sampling.generate import generate, sample_shape, seeded_noise  # noqa: E402

BASES = {"EarlyExitDDPMSampler": "DDPMSampler", "EarlyExitDDIMSampler": "DDIMSampler"}
DEFAULT_THRESHOLDS = (0.05, 0.075, 0.1, 0.125)


def samplers(sampler_cfg: dict, thresholds: list[float]) -> tuple[dict, dict[float, dict]]:
    """(the plain base sampler's config, {threshold: the early-exit sampler's config}) of test_cfg.sampler."""
    kind = sampler_cfg.get("type")
    if kind not in BASES:
        raise ConfigError(f"test_cfg.sampler.type: an early-exit report needs one of {', '.join(BASES)}, got {kind!r}")
    common = {k: v for k, v in sampler_cfg.items() if k not in ("type", "threshold", "simulate")}
    return dict(common, type=BASES[kind]), {th: dict(sampler_cfg, threshold=th, simulate=False) for th in thresholds}


def _timed(sampler, net, noise: torch.Tensor, labels: torch.Tensor | None, seeds: torch.Tensor) -> float:
    t0 = time.perf_counter()
    sampler(net, noise, labels, seeds=seeds)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run(cfg, checkpoint: str, thresholds: list[float], num: int | None, batch: int | None, ref: str | None,
        out: Path, device: torch.device, command: str) -> list[dict]:
    """Every row of the report (module docstring); writes OUT/report.md, metrics.json, exit_vs_timestep.png."""
    settings = test_settings(cfg, num=num, batch_gpu=batch, ref=ref)
    net, decoder = load_sampling_nets(cfg, settings, checkpoint, device)
    if not hasattr(net, "exit_output"):
        raise ConfigError(f"checkpoint: {type(net).__name__} has no early exits (expected a DeeDiffUViT part)")
    plain_cfg, exit_cfgs = samplers(dict(settings["sampler"]), thresholds)
    evaluators = build_evaluators(cfg.evaluators, device)
    ref_stats = load_ref(settings["ref"], evaluators)
    num_classes = int(getattr(net, "label_dim", 0))
    check_inputs(evaluators, images=settings["images"], has_labels=num_classes > 0)
    table, full = exit_gflops_table(net)
    table_plain, full_plain = exit_gflops_table(net, include_attention=False)
    shape = sample_shape(net, settings["shape"])
    n_time = min(settings["batch_gpu"], settings["num"])
    seeds = torch.arange(n_time, dtype=torch.int64) + settings["seed"]
    noise = seeded_noise(seeds, shape).to(device)
    labels = (seeds % num_classes).to(device) if num_classes else None

    def evaluate(sampler) -> tuple[dict, torch.Tensor | None]:
        exits = []

        def batches():
            for b in generate(net, sampler, settings["num"], settings["batch_gpu"], shape, num_classes=num_classes,
                              seed=settings["seed"], device=device, images=settings["images"], decoder=decoder):
                if getattr(sampler, "last_exits", None) is not None:
                    exits.append(sampler.last_exits.cpu())
                yield b

        result = run_evaluation(evaluators, batches(), ref_stats)
        return result, torch.cat(exits) if exits else None

    plain = build(SAMPLERS, plain_cfg, "test_cfg.sampler")
    result, _ = evaluate(plain)
    rows = [{"threshold": None, "layer_ratio": 1.0, "gflops_per_sample": full, "gflops_no_attention": full_plain,
             "saving": 0.0, "seconds_real": _timed(plain, net, noise, labels, seeds), "seconds_simulated": None,
             **result["metrics"]}]
    curves = {}
    for th, sampler_cfg in exit_cfgs.items():
        sampler = build(SAMPLERS, sampler_cfg, "test_cfg.sampler")
        simulated = build(SAMPLERS, dict(sampler_cfg, simulate=True), "test_cfg.sampler")
        result, exits = evaluate(sampler)
        cost = exit_cost_summary(exits, table, full)
        cost_plain = exit_cost_summary(exits, table_plain, full_plain)
        rows.append({"threshold": th, "layer_ratio": cost["layer_ratio"],
                     "gflops_per_sample": cost["gflops_per_sample"],
                     "gflops_no_attention": cost_plain["gflops_per_sample"], "saving": cost["ideal_saving"],
                     "seconds_real": _timed(sampler, net, noise, labels, seeds),
                     "seconds_simulated": _timed(simulated, net, noise, labels, seeds), **result["metrics"]})
        curves[th] = (sampler.tau.tolist(), exits.double().mean(0).tolist())
    write(out, rows, curves, net.depth, table, command)
    return rows


def write(out: Path, rows: list[dict], curves: dict, depth: int, table: list[float], command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    metric_names = [k for k in rows[0] if k not in ("threshold", "layer_ratio", "gflops_per_sample",
                                                     "gflops_no_attention", "saving", "seconds_real",
                                                     "seconds_simulated")]
    cells = []
    for r in rows:
        cells.append({"threshold": "no exit" if r["threshold"] is None else f"{r['threshold']:g}",
                      "layer_ratio": f"{r['layer_ratio']:.3f}", "GFLOPs/sample": f"{r['gflops_per_sample']:.3f}",
                      "GFLOPs w/o attention": f"{r['gflops_no_attention']:.3f}", "saving": f"{100 * r['saving']:.1f}%",
                      "real s": f"{r['seconds_real']:.2f}",
                      "simulated s": "-" if r["seconds_simulated"] is None else f"{r['seconds_simulated']:.2f}",
                      **{m: f"{r[m]:.4g}" for m in metric_names}})
    (out / "metrics.json").write_text(json.dumps({"rows": rows, "exit_gflops": table, "command": command},
                                                 indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for th, (tau, mean_exit) in curves.items():
        ax.plot(tau, mean_exit, label=f"threshold {th:g}")
    ax.set_xlabel("timestep t")
    ax.set_ylabel(f"mean exit index (of {depth} layers)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "exit_vs_timestep.png", dpi=120)
    plt.close(fig)
    exits_line = ", ".join(f"{g:.3f}" for g in table)
    (out / "report.md").write_text(
        f"# DeeDiff early exit\n\n{R.markdown_table(cells)}\nGFLOPs per exit index 0..{depth} (fvcore, 2 x "
        f"multiply-adds, attention included): {exits_line}.\n\n![exit index against timestep](exit_vs_timestep.png)"
        f"\n\nCommand: `{command}`\n")
