"""Every registry of diffscale, and the one `build` used to turn config dicts into objects.

mmengine provides the Registry (its Runner is not used: see README, Architecture). A config names a
component either by its registered name (`type='ToyMLP'`) or by the class itself (`type=ToyMLP`).
"""

import inspect
from typing import Any

from mmengine.registry import Registry

from diffscale.errors import ConfigError, closest

MODELS = Registry("model")
OBJECTIVES = Registry("objective")
SAMPLERS = Registry("sampler")
SELECTORS = Registry("selector")
HOOKS = Registry("hook")
EVALUATORS = Registry("evaluator")
DATASETS = Registry("dataset")
STRATEGIES = Registry("strategy")
OPTIMIZERS = Registry("optimizer")
LR_SCHEDULES = Registry("lr_schedule")


def lookup(registry: Registry, type_: Any, key: str) -> type:
    """The class (or function) a config's `type` names; ConfigError with the closest names if unknown."""
    if inspect.isclass(type_) or callable(type_):
        return type_
    if not isinstance(type_, str):
        raise ConfigError(f"{key}.type: expected a registered name or a class, got {type(type_).__name__}")
    obj = registry.get(type_)
    if obj is None:
        raise ConfigError(
            f"{key}.type: '{type_}' is not in the {registry.name} registry; closest: "
            f"{closest(type_, registry.module_dict)}"
        )
    return obj


def build(registry: Registry, cfg: dict, key: str, **default_args: Any) -> Any:
    """Build `cfg` (a dict with `type`) from `registry`; `key` is the config path used in errors.

    Arguments in `cfg` win over `default_args`. A keyword the constructor does not take is reported by
    its config key, not as a TypeError deep in the stack.
    """
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"{key}: expected a dict with a 'type' key, got {cfg!r}")
    args = dict(cfg)
    cls = lookup(registry, args.pop("type"), key)
    params = inspect.signature(cls).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        for name in args:
            if name not in params:
                raise ConfigError(
                    f"{key}.{name}: {cls.__name__} takes no argument '{name}'; expected one of: "
                    f"{', '.join(p for p in params if p != 'self')}"
                )
    for name, value in default_args.items():
        if takes_kwargs or name in params:
            args.setdefault(name, value)
    return cls(**args)
