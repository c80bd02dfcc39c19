"""DMD2 distillation on the 2D tree toy, end to end (tools/toy_distill_report.py): train the EDM teacher
(configs/toy/tree2d_baseline.py), distil it into a one-step generator (configs/dmd2/tree2d_dmd2.py), then sample
the teacher with 32 and 1 Heun steps and the generator (EMA and raw weights) from the same noise and labels, and
write report.md (table), metrics.json (the same numbers) and samples.png (one panel per row).

Training runs are `tools/train.py` subprocesses on resolved configs in OUT/configs/, as tools/toy_report.py does;
a run whose last_checkpoint is at its max_iters and whose resolved config is unchanged is reused.
"""

import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffscale import config as C
from diffscale.data.gmm import GaussianMixture2D
from diffscale.data.toy import tree_mixture
from diffscale.engine.checkpoint import read_pointer
from diffscale.engine.reference import load_frozen
from diffscale.evaluation import toy_report as R
from diffscale.evaluation.toy_metrics import denoiser_metrics, noisy_set, sample_metrics, support_mask
from diffscale.evaluation.toy_plot import plot_samples
from diffscale.sampling.edm_heun import EDMHeunSampler
from diffscale.sampling.guidance import Denoiser
from diffscale.sampling.one_step import OneStepSampler

ROOT = Path(__file__).resolve().parents[2]
TEACHER_CONFIG = ROOT / "configs/toy/tree2d_baseline.py"
DMD2_CONFIG = ROOT / "configs/dmd2/tree2d_dmd2.py"
INIT_PARTS = ("generator", "fake_score", "real_score")  # every DMD2 part starts from the teacher
# The report samples and scores every row itself on shared noise; the runs' own end-of-training plots would cost
# about 15 s per run on 2 CPU cores and compute nothing the report uses.
DROPPED_HOOKS = ("ToyPlotHook",)
TIMING_REPEATS = 3  # sample seconds: the fastest of this many identical calls (the machine is shared)

Sampler = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------------------------- training runs


def teacher_options(iters: int | None, seed: int) -> list[str]:
    """--cfg-options of the teacher run; `iters` None keeps the config's max_iters (4096)."""
    return [f"train_cfg.seed={seed}"] + ([f"train_cfg.max_iters={iters}"] if iters is not None else [])


def dmd2_options(teacher_dir: Path, iters: int | None, batch: int | None, lr: float | None, seed: int) -> list[str]:
    """--cfg-options of the DMD2 run: all parts from `teacher_dir`; None keeps the config's own value."""
    options = [f"parts.{part}.init.checkpoint={teacher_dir}" for part in INIT_PARTS] + [f"train_cfg.seed={seed}"]
    if iters is not None:
        options.append(f"train_cfg.max_iters={iters}")
    if batch is not None:
        options += [f"train_cfg.batch_size={batch}", f"train_cfg.batch_gpu={batch}"]
    if lr is not None:  # one rate for both trained parts, as in DMD2
        options += [f"parts.generator.optimizer.lr={lr}", f"parts.fake_score.optimizer.lr={lr}"]
    return options


def _hook_name(hook: dict) -> str:
    kind = hook.get("type")
    return getattr(kind, "__name__", str(kind))


def write_config(name: str, source: Path, options: list[str], out: Path) -> tuple[Path, int, bool]:
    """Resolve `source` with `options` (validated as tools/train.py would), drop DROPPED_HOOKS, write
    OUT/configs/<name>.py. Returns its path, the run's max_iters and whether it differs from the file written
    there before (a changed config invalidates a finished run)."""
    cfg = C.load_config(str(source), options, str(out / name))
    cfg.hooks = [h for h in cfg.hooks if _hook_name(h) not in DROPPED_HOOKS]
    path = out / "configs" / f"{name}.py"
    before = path.read_text() if path.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    C.dump(cfg, path)
    return path, int(cfg.train_cfg["max_iters"]), path.read_text() != before


def finished(work_dir: Path, max_iters: int) -> bool:
    """True if work_dir/last_checkpoint points at an existing checkpoint of iteration `max_iters`."""
    ckpt = read_pointer(work_dir)
    if ckpt is None:
        return False
    match = re.fullmatch(r"iter_(\d+)", ckpt.name)
    return match is not None and int(match.group(1)) == max_iters and ckpt.is_dir()


def train(config: Path, work_dir: Path, max_iters: int, label: str, reuse: bool) -> float | None:
    """Run tools/train.py on `config` into `work_dir` unless it finished already (and `reuse`). Returns the
    training wall time in seconds, None when reused. A failed or unfinished run exits with one line naming
    the run and its output file (OUT/<run>.out)."""
    if reuse and finished(work_dir, max_iters):
        print(f"{label}: done already ({work_dir})", flush=True)
        return None
    if work_dir.exists():  # unfinished or stale: start again, so the wall time is one uninterrupted run
        shutil.rmtree(work_dir)
    print(f"{label}: training ...", end=" ", flush=True)
    log = work_dir.parent / f"{work_dir.name}.out"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), str(config), "--work-dir", str(work_dir)],
                              stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"\n{label} failed (exit {proc.returncode}); its output: {log}")
    if not finished(work_dir, max_iters):
        raise SystemExit(f"\n{label}: no checkpoint of iteration {max_iters} in {work_dir}; its output: {log}")
    seconds = time.perf_counter() - t0
    print(f"{seconds:.0f} s", flush=True)
    return seconds


# ------------------------------------------------------------------------------------------------- sampling


def eval_inputs(mixture: GaussianMixture2D, num_samples: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean points x [N, 2], labels [N], outer flags [N], denoiser noise [N, 2] and sampler noise z [N, 2],
    drawn from one generator seeded `seed` in the order toy_metrics draws them, so that sampling from z with
    `labels` gives toy_metrics' own samples."""
    gen = torch.Generator().manual_seed(seed)
    x, labels, outer, noise = noisy_set(mixture, num_samples, gen)
    return x, labels, outer, noise, torch.randn(num_samples, 2, generator=gen)


def timed_samples(sampler: Sampler, net: Denoiser, z: torch.Tensor, labels: torch.Tensor,
                  repeats: int = TIMING_REPEATS) -> tuple[torch.Tensor, int, float]:
    """Samples [N, 2] of `sampler` from noise z [N, 2], the network evaluations per sample (NFE; the samplers
    call the net once per level on the whole batch, so calls per sampling = NFE) and the fastest wall time in
    seconds of `repeats` calls."""
    calls = 0

    def counted(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return net(x, sigma, c)

    best = math.inf
    for _ in range(repeats):
        calls = 0
        t0 = time.perf_counter()
        samples = sampler(counted, z, labels)
        best = min(best, time.perf_counter() - t0)
    return samples, calls, best


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def evaluate(out: Path, num_samples: int, seed: int) -> list[dict]:
    """One dict per row (teacher Heun-32, teacher Heun-1, generator EMA, generator raw): name, sampler, nfe,
    support_share, class_accuracy, sample_seconds, and the denoiser metrics (teacher rows; None for the
    generator, which is no denoiser). Writes OUT/samples/<row>.png and OUT/samples.png."""
    teacher_cfg, dmd2_cfg = C.load_config(str(TEACHER_CONFIG)), C.load_config(str(DMD2_CONFIG))
    heun, sigma_max = teacher_cfg.test_cfg["sampler"], float(dmd2_cfg.test_cfg["sampler"]["sigma_max"])
    steps = dict(sigma_min=float(heun["sigma_min"]), sigma_max=sigma_max, rho=float(heun.get("rho", 7.0)))
    cpu = torch.device("cpu")
    teacher_ema = dmd2_cfg.parts["generator"]["init"]["ema"]  # the average every DMD2 part starts from
    teacher = load_frozen(teacher_cfg.model, out / "teacher", teacher_ema, cpu, "teacher")
    gen_model, gen_ema = dmd2_cfg.parts["generator"]["model"], dmd2_cfg.test_cfg["ema"]
    rows_spec = [
        ("teacher Heun-32", teacher, EDMHeunSampler(num_steps=int(heun["num_steps"]), **steps)),
        ("teacher Heun-1", teacher, EDMHeunSampler(num_steps=1, **steps)),
        (f"generator EMA {gen_ema}", load_frozen(gen_model, out / "dmd2", gen_ema, cpu, "generator", part="generator"),
         OneStepSampler(sigma_max=sigma_max)),
        ("generator raw", load_frozen(gen_model, out / "dmd2", None, cpu, "generator", part="generator"),
         OneStepSampler(sigma_max=sigma_max)),
    ]
    mixture = tree_mixture()
    x, labels, outer, noise, z = eval_inputs(mixture, num_samples, seed)
    in_support = support_mask(mixture)  # once for all rows (seconds to compute)
    teacher_losses = denoiser_metrics(teacher, mixture, x, labels, outer, noise)  # sampler-independent
    rows, panels = [], {}
    for name, net, sampler in rows_spec:
        samples, nfe, seconds = timed_samples(sampler, net, z, labels)
        described = type(sampler).__name__ + (f"(num_steps={sampler.num_steps})" if hasattr(sampler, "num_steps")
                                              else f"(sigma_max={sampler.sigma_max:g})")
        rows.append({"name": name, "sampler": described, "nfe": nfe, "sample_seconds": seconds,
                     **sample_metrics(samples, labels, mixture, in_support=in_support),
                     "denoiser": teacher_losses if net is teacher else None})
        panels[name] = out / "samples" / f"{_slug(name)}.png"
        plot_samples(mixture, samples, labels, panels[name], title=f"{name}, NFE {nfe}")
    R.plot_scatter_panels(panels, out / "samples.png")
    return rows


# --------------------------------------------------------------------------------------------------- report


def table_rows(rows: list[dict]) -> list[dict]:
    """The markdown table's cells of `evaluate`'s rows: NFE, shares to 3 decimals, seconds to 3 decimals."""
    return [{"model and sampler": r["name"], "NFE": str(r["nfe"]), "support_share": f"{r['support_share']:.3f}",
             "class_accuracy": f"{r['class_accuracy']:.3f}", "sample_s": f"{r['sample_seconds']:.3f}"}
            for r in rows]


def _train_seconds(out: Path, name: str, seconds: float | None) -> float | None:
    """Training wall time of run `name`: this call's, else the one recorded when it trained (OUT/train_seconds.json)."""
    path = out / "train_seconds.json"
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    if seconds is not None:
        recorded[name] = seconds
        path.write_text(json.dumps(recorded, indent=1) + "\n")
    return recorded.get(name)


def write_metrics(out: Path, rows: list[dict], settings: dict) -> tuple[str, dict[str, str]]:
    """Write OUT/metrics.json; return the markdown table of `rows` and each run's training time as text (the
    shared part of this report and evaluation/objectives_report.py)."""
    (out / "metrics.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    secs = {k: "n/a" if v is None else f"{v:.0f} s" for k, v in settings["train_seconds"].items()}
    return R.markdown_table(table_rows(rows)), secs


def write_report(out: Path, rows: list[dict], settings: dict, command: str) -> str:
    """OUT/report.md and OUT/metrics.json; returns the table."""
    table, secs = write_metrics(out, rows, settings)
    s = settings
    (out / "report.md").write_text(
        f"# 2D tree toy: DMD2 one-step generator against its teacher\n\n"
        f"Teacher: configs/toy/tree2d_baseline.py, {s['teacher_iters']} iterations at batch {s['teacher_batch']} "
        f"(training {secs['teacher']}), EMA {s['teacher_ema']}. DMD2: configs/dmd2/tree2d_dmd2.py, "
        f"{s['dmd2_iters']} iterations at batch {s['dmd2_batch']}, lr {s['dmd2_lr']:g} (training {secs['dmd2']}); "
        f"every part starts from the teacher's {s['teacher_ema']}. Seed {s['seed']} (training and sampling noise).\n\n"
        f"{s['num_samples']} samples per row from the same noise and labels, sigma_max {s['sigma_max']:g}. "
        f"Heun: EDM's sampler (sigma_min {s['sigma_min']:g}, rho {s['rho']:g}); with 1 step it is one Euler step "
        f"to sigma 0, x = D(sigma_max z; sigma_max) (row sampler in metrics.json). NFE: network evaluations per "
        f"sample, counted. sample s: fastest of {TIMING_REPEATS} sampling calls, CPU, {s['threads']} thread(s). "
        f"The denoiser losses of toy_metrics are in metrics.json for the teacher only (the generator is no "
        f"denoiser).\n\n{table}\n![samples](samples.png)\n\nCommand: `{command}`\n")
    return table


def run(teacher_iters: int | None, iters: int | None, batch: int | None, lr: float | None, num_samples: int,
        seed: int, out: Path, command: str) -> int:
    """The whole report (see the module docstring); returns the exit code."""
    out = out.resolve()
    teacher_dir, dmd2_dir = out / "teacher", out / "dmd2"
    config, teacher_max, changed = write_config("teacher", TEACHER_CONFIG, teacher_options(teacher_iters, seed), out)
    teacher_s = train(config, teacher_dir, teacher_max, f"teacher ({teacher_max} iterations)", reuse=not changed)
    seconds = {"teacher": _train_seconds(out, "teacher", teacher_s)}
    config, dmd2_max, changed = write_config("dmd2", DMD2_CONFIG, dmd2_options(teacher_dir, iters, batch, lr, seed),
                                             out)
    # A teacher trained just now invalidates a distillation of the previous one.
    dmd2_s = train(config, dmd2_dir, dmd2_max, f"dmd2 ({dmd2_max} iterations)",
                   reuse=not changed and teacher_s is None)
    seconds["dmd2"] = _train_seconds(out, "dmd2", dmd2_s)
    print("evaluating ...", flush=True)
    rows = evaluate(out, num_samples, seed)
    teacher_cfg = C.load_config(str(out / "configs/teacher.py"))
    dmd2_cfg = C.load_config(str(out / "configs/dmd2.py"))
    heun = teacher_cfg.test_cfg["sampler"]
    settings = dict(
        teacher_iters=teacher_max, teacher_batch=int(teacher_cfg.train_cfg["batch_size"]),
        teacher_ema=dmd2_cfg.parts["generator"]["init"]["ema"], dmd2_iters=dmd2_max,
        dmd2_batch=int(dmd2_cfg.train_cfg["batch_size"]), dmd2_lr=float(dmd2_cfg.parts["generator"]["optimizer"]["lr"]),
        seed=seed, num_samples=num_samples, sigma_max=float(dmd2_cfg.test_cfg["sampler"]["sigma_max"]),
        sigma_min=float(heun["sigma_min"]), rho=float(heun.get("rho", 7.0)), threads=torch.get_num_threads(),
        train_seconds=seconds,
        command=command)
    table = write_report(out, rows, settings, command)
    print("\n" + table)
    print(f"wrote {out / 'report.md'}, {out / 'metrics.json'}, {out / 'samples.png'}")
    return 0
