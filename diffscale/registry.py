"""Every registry of diffscale, and the one `build` used to turn config dicts into objects.

mmengine provides the Registry (its Runner is not used: see README, Architecture). A config names a
component either by its registered name (`type='ToyMLP'`) or by the class itself (`type=ToyMLP`).

This module is a leaf: it imports no component. Each registry names the packages that fill it (`locations`),
imported on the first lookup; `import diffscale.models` (or `.diffusion`, `.sampling`, ...) registers that
package's components, as a library user expects.
"""

import inspect
from typing import Any

from mmengine.registry import Registry

from diffscale.errors import ConfigError, DataError, closest

# Preconditioned networks (EDMPrecond, EDM2Precond) live with their objectives in diffscale.diffusion.
MODELS = Registry("model", locations=["diffscale.models", "diffscale.diffusion"])
OBJECTIVES = Registry("objective", locations=["diffscale.diffusion"])
SAMPLERS = Registry("sampler", locations=["diffscale.sampling"])
SELECTORS = Registry("selector", locations=["diffscale.selection"])
HOOKS = Registry("hook", locations=["diffscale.engine.hooks"])
EVALUATORS = Registry("evaluator", locations=["diffscale.evaluation"])
DATASETS = Registry("dataset", locations=["diffscale.data"])
STRATEGIES = Registry("strategy", locations=["diffscale.engine.strategies"])
OPTIMIZERS = Registry("optimizer", locations=["diffscale.engine.lr_schedules"])
LR_SCHEDULES = Registry("lr_schedule", locations=["diffscale.engine.lr_schedules"])
ALL = (MODELS, OBJECTIVES, SAMPLERS, SELECTORS, HOOKS, EVALUATORS, DATASETS, STRATEGIES, OPTIMIZERS, LR_SCHEDULES)


def names(registry: Registry, sort: bool = True) -> list[str]:
    """Every name registered in `registry` (its packages imported first), sorted or in registration order."""
    registry.import_from_location()
    return sorted(registry.module_dict) if sort else list(registry.module_dict)


def lookup(registry: Registry, type_: Any, key: str) -> type:
    """The class (or function) a config's `type` names; ConfigError with the closest names if unknown."""
    if inspect.isclass(type_) or callable(type_):
        return type_
    if not isinstance(type_, str):
        raise ConfigError(f"{key}.type: expected a registered name or a class, got {type(type_).__name__}")
    obj = registry.get(type_)  # imports the registry's packages on first use
    if obj is None:
        raise ConfigError(
            f"{key}.type: '{type_}' is not in the {registry.name} registry; closest: "
            f"{closest(type_, names(registry))}"
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
    try:
        return cls(**args)
    except (ConfigError, DataError):  # already one line naming the key, or the shard and record
        raise
    except ValueError as exc:  # a combination the constructor rejects: name the keys it was given
        raise ConfigError(f"{key}: {getattr(cls, '__name__', cls)} rejects {_given(cfg, key)}: "
                          f"{' '.join(str(exc).split())}") from None


def _given(cfg: dict, key: str, limit: int = 240) -> str:
    """'key.a=1, key.b=[2, 3]' for the plain (non-dict) arguments of a config, shortened to `limit` characters."""
    items = [f"{key}.{k}={v!r}" for k, v in cfg.items() if k != "type" and not isinstance(v, dict)]
    text = ", ".join(items) or "its defaults"
    return text if len(text) <= limit else text[:limit] + "..."
