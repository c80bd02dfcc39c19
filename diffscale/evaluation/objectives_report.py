"""EDM, DDPM and rectified flow on the 2D tree toy at equal images seen (tools/toy_objectives_report.py): train
configs/toy/tree2d_baseline.py (EDM), configs/toy/tree2d_ddpm.py (DDPM, eps prediction) and
configs/toy/tree2d_flow.py (flow, v prediction) with the same body, optimizer, iterations, batch and seed, then
sample each run's EMA from the same noise and labels — EDM with its Heun sampler; DDPM with DDIM (its config's
steps, and at about Heun's NFE) and ancestral over all T; flow with Heun, Euler and stochastic Euler at about
Heun's NFE — and write report.md, metrics.json and samples.png. Runs are `tools/train.py` subprocesses on
resolved configs, reused when finished with unchanged settings (the helpers of evaluation/distill_report.py).
"""

from pathlib import Path

import torch

from diffscale import config as C
from diffscale.data.toy import tree_mixture
from diffscale.engine.reference import load_frozen
from diffscale.evaluation import toy_report as R
from diffscale.evaluation.distill_report import (
    TIMING_REPEATS,
    _slug,
    _train_seconds,
    eval_inputs,
    timed_samples,
    train,
    write_config,
    write_metrics,
)
from diffscale.evaluation.toy_metrics import sample_metrics, support_mask
from diffscale.evaluation.toy_plot import plot_samples
from diffscale.registry import SAMPLERS, build

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"edm": ROOT / "configs/toy/tree2d_baseline.py", "ddpm": ROOT / "configs/toy/tree2d_ddpm.py",
           "flow": ROOT / "configs/toy/tree2d_flow.py"}


def run_options(iters: int | None, batch: int | None, seed: int) -> list[str]:
    """--cfg-options shared by every run; None keeps the configs' own value (4096 iterations at batch 4096)."""
    options = [f"train_cfg.seed={seed}"]
    if iters is not None:
        options.append(f"train_cfg.max_iters={iters}")
    if batch is not None:
        options += [f"train_cfg.batch_size={batch}", f"train_cfg.batch_gpu={batch}"]
    return options


def sampler_rows(edm_cfg, ddpm_cfg, flow_cfg) -> list[tuple[str, str, dict]]:
    """(row name, run, sampler config) of every row: each config's own test sampler, DDIM at EDM Heun's NFE
    (2 x steps - 1), ancestral DDPM over all T, and flow Euler / stochastic Euler at that NFE."""
    heun, ddim = dict(edm_cfg.test_cfg["sampler"]), dict(ddpm_cfg.test_cfg["sampler"])
    flow = dict(flow_cfg.test_cfg["sampler"])
    heun_nfe = 2 * int(heun["num_steps"]) - 1
    ancestral = {k: v for k, v in ddim.items() if k not in ("type", "num_steps", "step_size", "eta")}
    flow_name = {"FlowHeunSampler": "Heun", "FlowEulerSampler": "Euler",
                 "FlowEulerStochasticSampler": "Euler-stochastic"}.get(flow["type"], flow["type"])
    return [
        (f"EDM Heun-{heun['num_steps']}", "edm", heun),
        (f"DDPM DDIM-{ddim['num_steps']} eta {ddim.get('eta', 0.0):g}", "ddpm", ddim),
        (f"DDPM DDIM-{heun_nfe} eta 0", "ddpm", dict(ddim, num_steps=heun_nfe, eta=0.0)),
        (f"DDPM ancestral-{ddim['num_timesteps']}", "ddpm", dict(ancestral, type="DDPMSampler")),
        (f"Flow {flow_name}-{flow['num_steps']}", "flow", flow),
        (f"Flow Euler-{heun_nfe}", "flow", dict(flow, type="FlowEulerSampler", num_steps=heun_nfe)),
        (f"Flow Euler-stochastic-{heun_nfe}", "flow", dict(flow, type="FlowEulerStochasticSampler",
                                                           num_steps=heun_nfe)),
    ]


def evaluate(out: Path, num_samples: int, seed: int) -> list[dict]:
    """One dict per row: name, run, sampler config, nfe, support_share, class_accuracy, sample_seconds.
    Writes OUT/samples/<row>.png and OUT/samples.png."""
    cfgs = {name: C.load_config(str(out / "configs" / f"{name}.py")) for name in CONFIGS}
    cpu = torch.device("cpu")
    nets = {name: load_frozen(cfg.model, out / name, cfg.test_cfg["ema"], cpu, name) for name, cfg in cfgs.items()}
    mixture = tree_mixture()
    _, labels, _, _, z = eval_inputs(mixture, num_samples, seed)
    in_support = support_mask(mixture)
    rows, panels = [], {}
    for name, run_name, sampler_cfg in sampler_rows(cfgs["edm"], cfgs["ddpm"], cfgs["flow"]):
        sampler = build(SAMPLERS, dict(sampler_cfg), f"{name}.sampler")
        samples, nfe, seconds = timed_samples(sampler, nets[run_name], z, labels)
        rows.append({"name": name, "run": run_name, "sampler": {k: str(v) for k, v in sampler_cfg.items()},
                     "nfe": nfe, "sample_seconds": seconds,
                     **sample_metrics(samples, labels, mixture, in_support=in_support)})
        panels[name] = out / "samples" / f"{_slug(name)}.png"
        plot_samples(mixture, samples, labels, panels[name], title=f"{name}, NFE {nfe}")
    R.plot_scatter_panels(panels, out / "samples.png")
    return rows


def write_report(out: Path, rows: list[dict], settings: dict) -> str:
    """OUT/report.md and OUT/metrics.json; returns the table."""
    table, secs = write_metrics(out, rows, settings)
    s = settings
    (out / "report.md").write_text(
        f"# 2D tree toy: EDM, DDPM and rectified flow at equal images seen\n\n"
        f"Every run: {s['iters']} iterations at batch {s['batch']} ({s['iters'] * s['batch']:,} images), the same "
        f"MLP body, optimizer and schedule, seed {s['seed']}; samples from each run's EMA {s['ema']}. "
        f"EDM: configs/toy/tree2d_baseline.py (training {secs['edm']}). DDPM: configs/toy/tree2d_ddpm.py, "
        f"{s['ddpm']} (training {secs['ddpm']}). Flow: configs/toy/tree2d_flow.py, {s['flow']} "
        f"(training {secs['flow']}).\n\n"
        f"{s['num_samples']} samples per row from the same noise and labels. NFE: network evaluations per sample, "
        f"counted. sample s: fastest of {TIMING_REPEATS} sampling calls, CPU, {s['threads']} thread(s).\n\n"
        f"{table}\n![samples](samples.png)\n\nCommand: `{s['command']}`\n")
    return table


def flow_settings(obj) -> str:
    """The flow objective in words, for the report."""
    t = "uniform t" if obj.get("t_sampling") == "uniform" else \
        f"logit-normal t ({obj.get('logit_mean', 0.0):g}, {obj.get('logit_std', 1.0):g})"
    return f"v prediction, {t}, shift {obj.get('shift', 1.0):g}"


def run(iters: int | None, batch: int | None, num_samples: int, seed: int, out: Path, command: str) -> int:
    """The whole report (see the module docstring); returns the exit code."""
    out = out.resolve()
    seconds = {}
    for name, source in CONFIGS.items():
        config, max_iters, changed = write_config(name, source, run_options(iters, batch, seed), out)
        spent = train(config, out / name, max_iters, f"{name} ({max_iters} iterations)", reuse=not changed)
        seconds[name] = _train_seconds(out, name, spent)
    print("evaluating ...", flush=True)
    rows = evaluate(out, num_samples, seed)
    cfg = C.load_config(str(out / "configs" / "ddpm.py"))
    obj = cfg.objective
    settings = dict(iters=int(cfg.train_cfg["max_iters"]), batch=int(cfg.train_cfg["batch_size"]), seed=seed,
                    ema=cfg.test_cfg["ema"], num_samples=num_samples, threads=torch.get_num_threads(),
                    ddpm=f"{obj['schedule']} T={obj['num_timesteps']}, {obj['prediction']} prediction, "
                         f"{obj['variance']} variance, loss {obj['loss']}",
                    flow=flow_settings(C.load_config(str(out / "configs" / "flow.py")).objective),
                    train_seconds=seconds, command=command)
    table = write_report(out, rows, settings)
    print("\n" + table)
    print(f"wrote {out / 'report.md'}, {out / 'metrics.json'}, {out / 'samples.png'}")
    return 0
