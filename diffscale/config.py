"""Load a Python config (mmengine `Config`, `_base_` inheritance), apply `--cfg-options`, validate, dump.

Validation runs before any process group or model exists, so a typo costs seconds, not a queue slot.
Every failure is a ConfigError whose message names the key and what was expected.
"""

import ast
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any

from mmengine.config import Config

from diffscale import registry as R
from diffscale.errors import ConfigError, closest

PRECISIONS = ("fp32", "bf16", "fp16")

# train_cfg keys with defaults: the one place they are set (filled in by `validate`).
TRAIN_DEFAULTS = dict(
    grad_clip=None,  # max global gradient L2 norm of each part (a part's own grad_clip wins); None: no clipping
    max_nonfinite_steps=10,  # abort after this many skipped non-finite steps in a row
    log_interval=10,  # steps between log lines / TensorBoard points
)
# The keys of one entry of `parts` (docs/architecture.md, "Parts"), and their kinds.
PART_SCHEMA: dict[str, tuple[type, ...]] = {
    "model": (dict,),  # a MODELS config
    "optimizer": (dict, type(None)),  # an OPTIMIZERS config, optionally with param_groups; None/absent: frozen
    "lr_schedule": (dict,),  # an LR_SCHEDULES config (default ConstantLR)
    "grad_clip": (int, float, type(None)),  # default train_cfg.grad_clip
    "trainable": (bool, list, tuple),  # True, or parameter-name patterns (fnmatch) to train; the rest is frozen
    "init": (dict, type(None)),  # dict(checkpoint=<checkpoint | work_dir | export>, ema=<average> | None, part=...)
}
SHORTHAND = ("model", "optimizer", "lr_schedule")  # the one-part form: a part named 'model'

# (dotted key, expected Python kind(s), required). Everything users and scripts rely on (docs/architecture.md).
SCHEMA: list[tuple[str, tuple[type, ...], bool]] = [
    ("work_dir", (str,), True),
    ("objective", (dict,), True),
    ("data", (dict,), True),
    ("data.train", (dict,), True),
    ("strategy", (dict,), True),
    ("strategy.type", (str,), True),
    ("strategy.zero_stage", (int,), False),
    ("train_cfg", (dict,), True),
    ("train_cfg.max_iters", (int,), True),
    ("train_cfg.batch_size", (int,), True),
    ("train_cfg.batch_gpu", (int,), True),
    ("train_cfg.precision", (str,), True),
    ("train_cfg.seed", (int,), True),
    ("train_cfg.grad_clip", (int, float, type(None)), True),
    ("train_cfg.max_nonfinite_steps", (int,), True),
    ("train_cfg.log_interval", (int,), True),
    ("checkpoint", (dict,), True),
    ("checkpoint.interval", (int,), True),
    ("checkpoint.keep", (int,), True),
    ("hooks", (list, tuple), True),
    ("evaluators", (list, tuple), True),
]

# Where each top-level component's `type` is looked up.
COMPONENT_REGISTRIES = {
    "objective": R.OBJECTIVES,
    "data.train": R.DATASETS,
    "sampler": R.SAMPLERS,
}
PART_REGISTRIES = {"model": R.MODELS, "optimizer": R.OPTIMIZERS, "lr_schedule": R.LR_SCHEDULES}


def _is_mapping(node: Any) -> bool:
    return isinstance(node, (dict, Config))


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif _is_mapping(node) and part in node:
            node = node[part]
        else:
            raise KeyError(dotted)
    return node


# --cfg-options values -------------------------------------------------------------------------------------------
_QUOTES = "'\""


def _scan(text: str) -> list[tuple[int, str, int]]:
    """(index, char, bracket depth) of every char of `text` outside quotes; a closing bracket has the depth of
    what it closes, so the commas at depth 0 separate the top-level elements."""
    out, depth, quote = [], 0, None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
            continue
        if ch in _QUOTES:
            quote = ch
            continue
        depth -= ch in ")]"
        out.append((i, ch, depth))
        depth += ch in "(["
    return out


def _split_top(text: str) -> list[str]:
    """The elements of a comma-separated `text` (commas inside brackets or quotes do not split); as mmengine's
    DictAction, a trailing comma adds no element."""
    cuts = [i for i, ch, depth in _scan(text) if ch == "," and depth == 0]
    items = [text[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(text)], strict=True)]
    return items[:-1] if items and not items[-1].strip() else items


def _enclosed(text: str) -> bool:
    """True when `text` is one bracketed group: '[1, 2]' or '(a, b)', not '(1)(2)'."""
    if text[:1] not in ("(", "["):
        return False
    closes = [i for i, ch, depth in _scan(text) if ch in ")]" and depth == 0]
    return closes[:1] == [len(text) - 1]


def _parse_scalar(text: str) -> Any:
    """mmengine's DictAction rules for one element: int, float, true / false in any case, else the string;
    'None' (and, unlike mmengine, 'none') is None, so `ema=none` means no average rather than one named 'none'."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    word = text.lower()
    if word in ("true", "false"):
        return word == "true"
    return None if word == "none" else text


def _parse_loose(text: str) -> Any:
    """What mmengine's DictAction makes of a value that is no Python literal: '[a, true]' is ['a', True],
    '(1, x)' a tuple, 'a,b' a list, a quoted element its text. Unlike mmengine, spaces inside an element are kept
    (a path may have some)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        return text[1:-1]
    if _enclosed(text):
        values = [_parse_loose(item) for item in _split_top(text[1:-1])]
        return tuple(values) if text[0] == "(" else values
    if any(ch == "," and depth == 0 for _, ch, depth in _scan(text)):  # each element is shorter than `text`
        return [_parse_loose(item) for item in _split_top(text)]
    return _parse_scalar(text)


def _parse_value(text: str) -> Any:
    """A `--cfg-options` value: a Python literal (1, 0.5, 'x', [1, 2], {'a': 1}, None, True) when it is one, else
    read by mmengine's DictAction rules (`_parse_loose`: false, none, [1,2,a], a,b); a bare 'a,b' is a list as in
    mmengine, never a tuple."""
    text = text.strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _parse_loose(text)
    if isinstance(value, tuple) and not text.startswith("("):
        return list(value)
    return value


# --cfg-options keys ---------------------------------------------------------------------------------------------
# Registries hinted by where a component sits (the last key of its path); any other typed dict is looked up in all.
_REGISTRY_BY_KEY = {"model": R.MODELS, "net": R.MODELS, "objective": R.OBJECTIVES, "sampler": R.SAMPLERS,
                    "selector": R.SELECTORS, "optimizer": R.OPTIMIZERS, "lr_schedule": R.LR_SCHEDULES,
                    "strategy": R.STRATEGIES, "train": R.DATASETS, "val": R.DATASETS}
_REGISTRY_BY_LIST = {"hooks": R.HOOKS, "evaluators": R.EVALUATORS}
_HOOK_KEYS = ("name",)  # taken by the trainer, not by the hook's constructor


def _registry_hint(parent_key: str) -> Any | None:
    head, _, last = parent_key.rpartition(".")
    if last.isdigit():
        return _REGISTRY_BY_LIST.get(head)
    return _REGISTRY_BY_KEY.get(last)


def _component_class(parent: Any, parent_key: str) -> Any | None:
    """The class (or function) a dict with `type` is built from, when that type is a class or a registered name;
    None for a plain dict or a type no registry knows (validation reports that one)."""
    type_ = parent.get("type")
    if inspect.isclass(type_) or inspect.isfunction(type_):
        return type_
    if not isinstance(type_, str):
        return None
    hint = _registry_hint(parent_key)
    for registry in [hint, *R.ALL] if hint is not None else R.ALL:
        registry.import_from_location()
        # module_dict, not Registry.get: get() imports any dotted name as a module path
        if type_ in registry.module_dict:
            return registry.module_dict[type_]
    return None


def _documented_keys(parent_key: str) -> set[str]:
    """Keys that may be set under `parent_key` although the file does not write them: the schema's, train_cfg's
    and test_cfg's defaults, and the keys of a part."""
    keys = {d.rpartition(".")[2] for d, _, _ in SCHEMA if d.rpartition(".")[0] == parent_key}
    if not parent_key:
        keys |= {"parts", "test_cfg", *SHORTHAND, *(k for k in COMPONENT_REGISTRIES if "." not in k)}
    elif parent_key == "train_cfg":
        keys |= set(TRAIN_DEFAULTS)
    elif parent_key == "test_cfg":
        from diffscale.evaluation.pipeline import TEST_DEFAULTS  # heavy (torch, samplers): only when needed

        keys |= set(TEST_DEFAULTS)
    elif parent_key.startswith("parts.") and parent_key.count(".") == 1:
        keys |= set(PART_SCHEMA)
    return keys


def _parameters(cls: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword arguments `cls` takes, and whether it takes any other (**kwargs, or a signature that cannot be
    read)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}, True
    named = {n: p for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _flag_kinds(param: inspect.Parameter) -> tuple[type, ...] | None:
    """(bool,) or (bool, NoneType) when `param` is a flag (by its annotation, else its default); else None."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return (bool,) if isinstance(param.default, bool) else None
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = typing.get_args(annotation) if union else (annotation,)
    return kinds if bool in kinds and set(kinds) <= {bool, type(None)} else None


def _check_flag(dotted: str, value: Any, kinds: tuple[type, ...] | None) -> None:
    # 1 and 0 are no flags either (int is no bool subclass): a value must not switch a feature by its truthiness.
    if kinds is not None and not isinstance(value, kinds):
        raise ConfigError(f"{dotted}: expected {_kind_name(kinds)} (true or false), got {type(value).__name__} "
                          f"{value!r}")


def _check_argument(cls: Any, dotted: str, parent: Any, parent_key: str, leaf: str, value: Any) -> None:
    """`leaf` must be an argument of the component's constructor (anything, when it takes **kwargs), or already
    written in the file (the build reports it); a flag argument takes only a bool."""
    params, takes_any = _parameters(cls)
    if leaf in params:
        _check_flag(dotted, value, _flag_kinds(params[leaf]))
        return
    if takes_any or leaf in parent or leaf == "type" or (_registry_hint(parent_key) is R.HOOKS and leaf in _HOOK_KEYS):
        return
    name = getattr(cls, "__name__", str(cls))
    raise ConfigError(f"--cfg-options {dotted}: {name} takes no argument '{leaf}'; closest: "
                      f"{closest(leaf, [p for p in params if p != 'self']) or '(none)'}")


def _check_key(dotted: str, parent: Any, parent_key: str, leaf: str, value: Any) -> None:
    """Raise ConfigError unless `parent[leaf] = value` sets something a run reads (so a typo cannot pass)."""
    if not _is_mapping(parent):
        raise ConfigError(f"--cfg-options {dotted}: unknown key '{leaf}' in '{parent_key or '<root>'}'; "
                          f"closest: (none)")
    if isinstance(parent.get(leaf), bool) and isinstance(value, str):  # the file says this is a flag
        _check_flag(dotted, value, (bool,))
    cls = _component_class(parent, parent_key) if "type" in parent else None
    if cls is not None:
        _check_argument(cls, dotted, parent, parent_key, leaf, value)
        return
    names = set(parent.keys()) | _documented_keys(parent_key)
    if leaf not in names:
        raise ConfigError(f"--cfg-options {dotted}: unknown key '{leaf}' in '{parent_key or '<root>'}'; "
                          f"closest: {closest(leaf, names) or '(none)'}")


def apply_options(cfg: Config, options: list[str]) -> None:
    """Apply `a.b=c` overrides. A key may be one the file writes, an argument of the component (a dict with a
    registered `type`) it sits in, or a documented key (SCHEMA, TRAIN_DEFAULTS, test_cfg, a part's); anything
    else is a ConfigError with the closest names, so a typo cannot pass silently."""
    for option in options:
        if "=" not in option:
            raise ConfigError(f"--cfg-options '{option}': expected KEY=VALUE")
        dotted, text = option.split("=", 1)
        parent_key, _, leaf = dotted.rpartition(".")
        try:
            parent = _get(cfg, parent_key) if parent_key else cfg
        except KeyError:
            raise ConfigError(f"--cfg-options {dotted}: unknown key '{parent_key}'") from None
        value = _parse_value(text)
        if isinstance(parent, (list, tuple)) and leaf.isdigit() and int(leaf) < len(parent):
            if isinstance(parent, tuple):
                raise ConfigError(f"--cfg-options {dotted}: '{parent_key}' is a tuple; set it whole")
            parent[int(leaf)] = value
            continue
        _check_key(dotted, parent, parent_key, leaf, value)
        parent[leaf] = value


def _kind_name(kinds: tuple[type, ...]) -> str:
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def _kind_error(key: str, value: Any, kinds: tuple[type, ...]) -> ConfigError | None:
    # bool is an int subclass; a flag where a count is expected is a mistake.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        return ConfigError(f"{key}: expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}")
    return None


def part_specs(cfg: Config) -> dict[str, dict]:
    """{part name: its spec with every key of PART_SCHEMA} of a validated config: `parts`, or the one-part
    shorthand (top-level model / optimizer / lr_schedule) as a part named 'model'."""
    given = {k: dict(v) for k, v in cfg.parts.items()} if "parts" in cfg else {
        "model": {k: cfg[k] for k in SHORTHAND}}
    specs = {}
    for name, spec in given.items():
        trainable = spec.get("optimizer") is not None
        specs[name] = {"optimizer": None, "lr_schedule": dict(type="ConstantLR"),
                       "grad_clip": cfg.train_cfg.get("grad_clip"), "trainable": trainable, "init": None, **spec}
    return specs


def _validate_parts(cfg: Config) -> None:
    if "parts" in cfg:
        # A config derived from a one-part one switches to parts by setting model = optimizer = lr_schedule = None.
        both = [k for k in SHORTHAND if cfg.get(k) is not None]
        if both:
            raise ConfigError(f"parts: a config gives either parts or the one-part shorthand (model, optimizer, "
                              f"lr_schedule), not both; remove {', '.join(both)} (or set them to None)")
        if not isinstance(cfg.parts, dict) or not cfg.parts:
            raise ConfigError(f"parts: expected a non-empty dict of name=dict(model=..., optimizer=...), "
                              f"got {cfg.parts!r}")
    else:
        for key in SHORTHAND:
            if key not in cfg:
                raise ConfigError(f"{key}: missing required key (expected dict), or give `parts`")
    for name, spec in part_specs(cfg).items():
        key = f"parts.{name}" if "parts" in cfg else None
        for field, value in spec.items():
            where = f"{key}.{field}" if key else field
            if field not in PART_SCHEMA:
                raise ConfigError(f"{where}: unknown key; expected one of {', '.join(PART_SCHEMA)} "
                                  f"(closest: {closest(field, list(PART_SCHEMA)) or '(none)'})")
            error = _kind_error(where, value, PART_SCHEMA[field])
            if error:
                raise error
            if field in PART_REGISTRIES and value is not None:
                _check_type(value, PART_REGISTRIES[field], where)
        where = key or "optimizer"
        lr = (spec["optimizer"] or {}).get("lr", 1.0)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ConfigError(f"{key + '.optimizer' if key else 'optimizer'}.lr: expected a number > 0, got {lr!r}")
        if spec["optimizer"] is None and spec["trainable"] not in (False,):
            raise ConfigError(f"{where}: trainable={spec['trainable']!r} needs an optimizer (a part without one "
                              f"is frozen)")
        if isinstance(spec["trainable"], (list, tuple)) and not all(isinstance(p, str) for p in spec["trainable"]):
            raise ConfigError(f"{key or 'trainable'}.trainable: expected True or a list of parameter-name patterns")
        if spec["init"] is not None and not isinstance(spec["init"].get("checkpoint"), str):
            raise ConfigError(f"{key or 'init'}.init.checkpoint: expected a checkpoint, work_dir or .safetensors "
                              f"path (str)")


def validate(cfg: Config) -> None:
    """Check required keys, kinds, enumerations and component types; fill train_cfg defaults. Raises ConfigError."""
    if isinstance(cfg.get("train_cfg"), dict):
        for key, value in TRAIN_DEFAULTS.items():
            cfg.train_cfg.setdefault(key, value)
    for dotted, kinds, required in SCHEMA:
        try:
            value = _get(cfg, dotted)
        except KeyError:
            if required:
                raise ConfigError(f"{dotted}: missing required key (expected {_kind_name(kinds)})") from None
            continue
        error = _kind_error(dotted, value, kinds)
        if error:
            raise error
    strategy_types = tuple(R.names(R.STRATEGIES, sort=False))
    if cfg.strategy["type"] not in strategy_types:
        raise ConfigError(f"strategy.type: expected one of {strategy_types}, got '{cfg.strategy['type']}'")
    if cfg.strategy["type"] == "deepspeed" and cfg.strategy.get("zero_stage", 2) not in (1, 2, 3):
        raise ConfigError(f"strategy.zero_stage: expected 1, 2 or 3, got {cfg.strategy['zero_stage']}")
    if cfg.train_cfg["precision"] not in PRECISIONS:
        raise ConfigError(f"train_cfg.precision: expected one of {PRECISIONS}, got '{cfg.train_cfg['precision']}'")
    for key in ("train_cfg.max_iters", "train_cfg.batch_size", "train_cfg.batch_gpu", "checkpoint.interval"):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}: expected a positive integer, got {_get(cfg, key)}")
    for key, registry in COMPONENT_REGISTRIES.items():
        try:
            component = _get(cfg, key)
        except KeyError:
            continue
        _check_type(component, registry, key)
    _validate_parts(cfg)
    for i, hook in enumerate(cfg.hooks):
        _check_type(hook, R.HOOKS, f"hooks.{i}")
    for i, evaluator in enumerate(cfg.evaluators):
        _check_type(evaluator, R.EVALUATORS, f"evaluators.{i}")


def _check_type(component: Any, registry: Any, key: str) -> None:
    if not isinstance(component, dict) or "type" not in component:
        raise ConfigError(f"{key}: expected a dict with a 'type' key, got {component!r}")
    R.lookup(registry, component["type"], key)


def batch_arithmetic(batch_size: int, batch_gpu: int, world_size: int) -> tuple[int, int]:
    """(batch_gpu, accum) with batch_size == batch_gpu * accum * world_size, as EDM2 treats it: `batch_gpu` is the
    largest per-device micro-batch, so on more devices than batch_size / batch_gpu it becomes
    batch_size / world_size (the same config runs on 1 or 8 GPUs)."""
    if batch_size % world_size != 0:
        raise ConfigError(f"train_cfg.batch_size: {batch_size} is not divisible by the world size {world_size}")
    batch_gpu = min(batch_gpu, batch_size // world_size)
    per_round = batch_gpu * world_size
    if batch_size % per_round != 0:
        raise ConfigError(
            f"train_cfg.batch_size: {batch_size} is not a multiple of train_cfg.batch_gpu * world_size = "
            f"{batch_gpu} * {world_size} = {per_round} (batch_size == batch_gpu * accum * world_size)"
        )
    return batch_gpu, batch_size // per_round


def _config_line(exc: BaseException) -> str:
    """' (F line N)' of the innermost traceback frame in a config file (the one named, or a `_base_` of it), else
    '' (a SyntaxError's message already names its line)."""
    import traceback

    if isinstance(exc, SyntaxError):
        return ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.endswith(".py") and "site-packages" not in f.filename and Path(f.filename).is_file()]
    return f" ({frames[-1].filename} line {frames[-1].lineno})" if frames else ""


def load_config(path: str, options: list[str] | None = None, work_dir: str | None = None) -> Config:
    """Read, override, default `work_dir` to work_dirs/<config name>, and validate."""
    if not Path(path).is_file():
        raise ConfigError(f"config: no such file '{path}'")
    try:
        cfg = Config.fromfile(path)
    except FileNotFoundError as exc:  # a `_base_` entry that does not exist
        raise ConfigError(f"config {path}: no such file '{os.path.normpath(exc.filename)}' (a _base_ entry?)") from None
    except Exception as exc:  # a config is Python: anything it raises while loading is the config's error
        raise ConfigError(f"config {path}: {type(exc).__name__}: {' '.join(str(exc).split())}"
                          f"{_config_line(exc)}") from None
    apply_options(cfg, options or [])
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif "work_dir" not in cfg:
        cfg.work_dir = str(Path("work_dirs") / Path(path).stem)
    validate(cfg)
    return cfg


def _named_types(node: Any) -> Any:
    """Replace class objects by their names so that the dumped config is plain, re-loadable Python."""
    if isinstance(node, dict):
        return {k: _named_types(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_named_types(v) for v in node)
    if inspect.isclass(node) or inspect.isfunction(node):
        return node.__name__
    return node


def dump(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (after `_base_` and `--cfg-options`) as a Python file."""
    lines = [f"{k} = {v!r}" for k, v in _named_types(cfg.to_dict()).items()]
    Path(path).write_text("# Resolved config written by diffscale.\n" + "\n".join(lines) + "\n")
