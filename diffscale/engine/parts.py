"""Parts: the named networks of a run (docs/architecture.md, "Parts").

A config's `parts = dict(<name>=dict(model, optimizer, lr_schedule, grad_clip, trainable, init))`, or the
one-part shorthand (top-level model / optimizer / lr_schedule: a part named 'model'), becomes one `Part` each:
the built module with its initial weights loaded and its frozen parameters marked, before any strategy sees it,
so DDP, FSDP2 and DeepSpeed wrap only what trains.
"""

import fnmatch
from dataclasses import dataclass

from torch import nn

from diffscale.engine.reference import load_into
from diffscale.errors import ConfigError
from diffscale.registry import MODELS, build


@dataclass
class Part:
    name: str
    module: nn.Module
    optimizer_cfg: dict | None  # None: frozen (eval mode, no gradients, in no optimizer)
    lr_schedule_cfg: dict
    grad_clip: float | None
    key: str = ""  # config-key prefix in errors: '' for the one-part shorthand, 'parts.<name>.' otherwise

    @property
    def trainable(self) -> bool:
        return self.optimizer_cfg is not None


def _init_weights(module: nn.Module, init: dict, key: str) -> None:
    """Load `init` = dict(checkpoint, ema=None, part=None, missing=()) strictly (the loader the curation reference
    uses); `missing`: fnmatch patterns of the part's own entries the checkpoint may lack, which keep their fresh
    init (a DeeDiff model from a U-ViT backbone: missing=['exit_heads.*', 'probes.*']). `key` is the init's
    config key."""
    unknown = set(init) - {"checkpoint", "ema", "part", "missing"}
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {sorted(unknown)}; expected checkpoint, ema, part, missing")
    missing = init.get("missing") or ()
    if isinstance(missing, str) or not all(isinstance(p, str) for p in missing):
        raise ConfigError(f"{key}.missing: expected a list of fnmatch patterns, got {missing!r}")
    load_into(module, init["checkpoint"], init.get("ema"), init.get("part"), key, "the part's model",
              allow_missing=tuple(missing))


def _freeze_by_pattern(module: nn.Module, patterns: list[str] | tuple[str, ...], key: str) -> None:
    """Keep requires_grad only on parameters whose name matches one of `patterns` (fnmatch)."""
    names = [n for n, _ in module.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"{key}: pattern '{pattern}' matches no parameter of {type(module).__name__} "
                              f"(names look like {', '.join(names[:4])}, ...)")
    for name, p in module.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns))


def build_part(name: str, spec: dict, key: str) -> Part:
    """The module of one part spec (config.part_specs), initialised and with its frozen parameters marked.
    `key`: the config-key prefix of the spec ('' for the one-part shorthand, 'parts.<name>.')."""
    module = build(MODELS, spec["model"], f"{key}model")
    if spec["init"] is not None:
        _init_weights(module, dict(spec["init"]), f"{key}init")
    optimizer_cfg = dict(spec["optimizer"]) if spec["optimizer"] is not None else None
    if optimizer_cfg is None:
        module.requires_grad_(False)
        module.eval()
    elif isinstance(spec["trainable"], (list, tuple)):
        _freeze_by_pattern(module, spec["trainable"], f"{key}trainable")
    grad_clip = spec["grad_clip"]
    return Part(name, module, optimizer_cfg, dict(spec["lr_schedule"]), None if grad_clip is None else float(grad_clip),
                key)


def param_groups(module: nn.Module, optimizer_cfg: dict, key: str) -> tuple[list[dict], dict]:
    """The optimizer's parameter groups of `module`'s trainable parameters, and the optimizer config without
    `param_groups`. `param_groups=[dict(params='pattern' | [patterns], lr_mult=0.1, **other options)]`: each
    trainable parameter goes to the first group whose pattern matches its name, the rest to a default group.
    Every group records its `lr_mult`, which the trainer multiplies into the scheduled lr."""
    cfg = dict(optimizer_cfg)
    groups_cfg = [dict(g) for g in cfg.pop("param_groups", None) or []]
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    taken: set[str] = set()
    groups = []
    for i, g in enumerate(groups_cfg):
        patterns = g.pop("params", None)
        if patterns is None:
            raise ConfigError(f"{key}.param_groups.{i}.params: expected a parameter-name pattern or a list of them")
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        members = [p for n, p in named if n not in taken and any(fnmatch.fnmatchcase(n, pt) for pt in patterns)]
        if not members:
            raise ConfigError(f"{key}.param_groups.{i}.params: {patterns} match no trainable parameter")
        taken |= {n for n, _ in named if any(fnmatch.fnmatchcase(n, pt) for pt in patterns)}
        groups.append({"params": members, "lr_mult": float(g.pop("lr_mult", 1.0)), **g})
    rest = [p for n, p in named if n not in taken]
    if rest or not groups:
        groups.insert(0, {"params": rest, "lr_mult": 1.0})
    return groups, cfg


def base_lr(optimizer_cfg: dict) -> float:
    """The optimizer's reference lr (what the schedule's factor multiplies)."""
    return float(optimizer_cfg.get("lr", 1e-3))


def count_params(module: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters) of `module`."""
    total = sum(p.numel() for p in module.parameters())
    return total, sum(p.numel() for p in module.parameters() if p.requires_grad)

