"""What tools/test.py, tools/compute_ref_stats.py and the EvalHook share: the test-time sampling settings
(`test_cfg`), building and checking evaluators, one evaluation pass, reference-statistics files, the table."""

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from diffscale.engine.reference import load_frozen
from diffscale.errors import ConfigError, closest
from diffscale.evaluation.base import Evaluator
from diffscale.registry import EVALUATORS, build
from diffscale.sampling.generate import unconditional
from diffscale.sampling.guidance import Denoiser
from diffscale.utils.dist import all_reduce_sum, broadcast_object

# test_cfg keys and their defaults (a config's `test_cfg` documents each one; configs/toy/tree2d_baseline.py).
TEST_DEFAULTS = dict(
    num=50000,  # samples to generate and evaluate
    batch_gpu=64,  # samples per device per sampler call
    seed=0,  # sample i starts from noise seeded seed + i
    ema=None,  # the average to sample from (an EMAHook key such as 'pf_0.100'); None: the raw weights
    sampler=dict(type="EDMHeunSampler"),  # its `guidance` is the weight w of D_guide + w (D - D_guide)
    guide=None,  # None; 'cfg' (the same net without labels); dict(model, checkpoint, ema): autoguidance
    shape=None,  # one sample's shape; None: (img_channels, img_resolution, img_resolution) of the model
    images=True,  # samples are images in [-1, 1] and evaluators get uint8; False: raw samples (the toy)
    ref=None,  # reference statistics file (tools/compute_ref_stats.py); tools/test.py --ref overrides
    part=None,  # the part that samples (e.g. 'generator'); None: the run's only part
    decoder=None,  # a frozen part applied to the samples before images are made (a VAE decoder); None: none
)


def test_settings(cfg, **overrides) -> dict:
    """The config's `test_cfg` over TEST_DEFAULTS, then `overrides` that are not None; checked."""
    given = dict(cfg.get("test_cfg") or {})
    for key in given:
        if key not in TEST_DEFAULTS:
            raise ConfigError(f"test_cfg.{key}: unknown key; closest: {closest(key, list(TEST_DEFAULTS))}")
    s = {**TEST_DEFAULTS, **given, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("num", "batch_gpu"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] <= 0:
            raise ConfigError(f"test_cfg.{key}: expected a positive integer, got {s[key]!r}")
    guide = s["guide"]
    if not (guide is None or guide == "cfg" or (isinstance(guide, dict) and {"model", "checkpoint"} <= set(guide))):
        raise ConfigError(f"test_cfg.guide: expected None, 'cfg' or dict(model, checkpoint, ema), got {guide!r}")
    if not isinstance(s["sampler"], dict) or "type" not in s["sampler"]:
        raise ConfigError(f"test_cfg.sampler: expected a dict with a 'type' key, got {s['sampler']!r}")
    if s["sampler"].get("guidance", 1.0) != 1.0 and guide is None:
        raise ConfigError(f"test_cfg.sampler.guidance={s['sampler']['guidance']} needs test_cfg.guide "
                          "('cfg' or dict(model, checkpoint, ema))")
    return s


def build_guide(guide_cfg: str | dict | None, net: Denoiser | None, device: torch.device,
                key: str = "test_cfg.guide") -> Denoiser | None:
    """None, classifier-free guidance's unconditional `net`, or a frozen autoguidance model
    (dict(model, checkpoint, ema=None, part=None)). The one guide loader of every tool and hook."""
    if guide_cfg is None:
        return None
    if guide_cfg == "cfg":
        return unconditional(net)
    g = dict(guide_cfg)
    return load_frozen(g["model"], g["checkpoint"], g.get("ema"), device, key, part=g.get("part"))


def part_model_cfg(cfg, part: str) -> dict:
    """The model config of `part`: an entry of `parts`, or the one-part shorthand's `model`."""
    if "parts" not in cfg:
        if part != "model":
            raise ConfigError(f"test_cfg.part: '{part}' is not a part of this config (its one part is 'model')")
        return dict(cfg.model)
    if part not in cfg.parts:
        raise ConfigError(f"test_cfg.part: '{part}' is not a part of this config (parts: {', '.join(cfg.parts)})")
    return dict(cfg.parts[part]["model"])


def sampling_parts(cfg, settings: dict) -> tuple[str, str | None]:
    """(the part that samples, the decoder part or None) of test settings: test_cfg.part, else the only part."""
    names = list(cfg.parts) if "parts" in cfg else ["model"]
    part = settings["part"]
    if part is None:
        if len(names) != 1:
            raise ConfigError(f"test_cfg.part: this config has the parts {', '.join(names)}; name the one that "
                              f"samples")
        part = names[0]
    for key, name in (("part", part), ("decoder", settings["decoder"])):
        if name is not None and name not in names:
            raise ConfigError(f"test_cfg.{key}: '{name}' is not a part of this config (parts: {', '.join(names)})")
    return part, settings["decoder"]


def load_sampling_nets(cfg, settings: dict, checkpoint, device: torch.device) -> tuple[torch.nn.Module, object]:
    """The network that samples (test_cfg.part at test_cfg.ema) and the decoder (test_cfg.decoder, raw weights,
    or None) of a checkpoint, work_dir or export: the one "model to sample with" of tools/test.py and
    tools/generate.py."""
    part, decoder = sampling_parts(cfg, settings)
    net = load_frozen(part_model_cfg(cfg, part), checkpoint, settings["ema"], device, "checkpoint", part=part)
    if decoder is not None:
        decoder = load_frozen(part_model_cfg(cfg, decoder), checkpoint, None, device, "test_cfg.decoder",
                              part=decoder)
    return net, decoder


def build_evaluators(cfgs: list | tuple, device: torch.device, key: str = "evaluators") -> list[Evaluator]:
    """Evaluators of a config's `evaluators` list (weight files are checked here, before any sampling)."""
    if not cfgs:
        raise ConfigError(f"{key}: empty; add evaluators, e.g. [dict(type='FID'), dict(type='FDDINOv2')]")
    evaluators = [build(EVALUATORS, dict(c), f"{key}.{i}", device=device) for i, c in enumerate(cfgs)]
    names = [e.name for e in evaluators]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: two evaluators report under the same name: {names}")
    return evaluators


def check_inputs(evaluators: list[Evaluator], images: bool, has_labels: bool) -> None:
    """Every evaluator gets what it reads: images or raw samples, labels if it needs them. Evaluators with
    `input = None` read no samples (NLL scores held-out data with the network itself) and suit any run."""
    kind = "images" if images else "samples"
    for e in evaluators:
        if e.input is None:
            continue
        if e.input != kind:
            raise ConfigError(f"{type(e).__name__} reads {e.input}, but this run produces {kind} "
                              f"(test_cfg.images={images})")
        if e.needs_labels and not has_labels:
            raise ConfigError(f"{type(e).__name__} needs class labels; the model is unconditional or the images "
                              f"have none (an npz 'labels' array, or a folder's dataset.json)")


def hand_over_network(evaluators: list[Evaluator], net: torch.nn.Module) -> bool:
    """Give the raw (unguided) network to the evaluators that score it themselves (`needs_network`: NLL), for one
    evaluation. Returns whether any evaluator reads samples (when none does, callers generate none)."""
    for e in evaluators:
        if getattr(e, "needs_network", False):
            e.set_network(net)
    return any(e.input is not None for e in evaluators)


def feed(evaluators: list[Evaluator], batches: Iterable, denoiser: Denoiser | None = None) -> tuple[int, float]:
    """Begin every evaluator, then feed it every batch ((x, labels, ...) tuples). Returns (samples seen on this
    rank, seconds spent in the evaluators)."""
    for e in evaluators:
        e.begin(denoiser)
    n, eval_s = 0, 0.0
    for batch in batches:
        x, labels = batch[0], batch[1]
        t = time.perf_counter()
        for e in evaluators:
            e.update(x, labels)
        eval_s += time.perf_counter() - t
        n += x.shape[0]
    return n, eval_s


def run_evaluation(evaluators: list[Evaluator], batches: Iterable, ref: dict | None = None,
                   denoiser: Denoiser | None = None) -> dict:
    """`feed`, then compute every evaluator. Collective. Returns {'metrics': {name: value}, 'comparable':
    {name: bool}, 'provenance': {name: 'yes (file sha256:...)' or 'NO: why (file ...)'}, 'num': samples over all
    ranks, 'seconds': {'total', 'evaluators'}}."""
    t0 = time.perf_counter()
    n, eval_s = feed(evaluators, batches, denoiser)
    metrics, comparable, provenance = {}, {}, {}
    t = time.perf_counter()
    for e in evaluators:
        values = e.compute(ref if e.needs_reference else None)
        metrics.update(values)
        comparable.update(dict.fromkeys(values, e.comparable))
        provenance.update(dict.fromkeys(values, e.provenance()))
    eval_s += time.perf_counter() - t
    metrics = broadcast_object(metrics)  # bit-identical on every rank: decisions on them (best) stay collective
    num = int(all_reduce_sum(torch.tensor([n], dtype=torch.int64, device=evaluators[0].device)).item())
    return {"metrics": metrics, "comparable": comparable, "provenance": provenance, "num": num,
            "seconds": {"total": time.perf_counter() - t0, "evaluators": eval_s}}


def load_ref(path: str | Path | None, evaluators: list[Evaluator]) -> dict[str, np.ndarray] | None:
    """Reference statistics for the evaluators that need them; ConfigError if the file is missing."""
    needing = [type(e).__name__ for e in evaluators if e.needs_reference]
    if not needing:
        return None
    if path is None or not Path(path).is_file():
        raise ConfigError(f"{', '.join(needing)} need reference statistics: --ref / test_cfg.ref is "
                          f"{'not set' if path is None else repr(str(path)) + ', no such file'} "
                          f"(make one with tools/compute_ref_stats.py)")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def reference_stats(evaluators: list[Evaluator]) -> dict[str, np.ndarray]:
    """{'<name>_<key>': array} of every evaluator's statistics of what it saw. Collective."""
    out = {}
    for e in evaluators:
        out.update({f"{e.name}_{k}": v for k, v in e.reference().items()})
    return out


def format_table(result: dict) -> str:
    """Metric | value | comparable, one line each. 'comparable' is 'yes' only for the official network (its weight
    file's SHA-256 checked, base.FeatureEvaluator); otherwise it says why not and which file was used."""
    lines = [f"{'metric':<28} {'value':>14}  comparable", "-" * 56]
    provenance = result.get("provenance", {})  # results recorded before it existed have only the flags
    for name, value in result["metrics"].items():
        mark = provenance.get(name) or ("yes" if result["comparable"][name] else "NO (random or substituted network)")
        lines.append(f"{name:<28} {value:>14.6g}  {mark}")
    lines.append(f"({result['num']} samples, {result['seconds']['total']:.1f} s, of which evaluators "
                 f"{result['seconds']['evaluators']:.1f} s)")
    return "\n".join(lines)
