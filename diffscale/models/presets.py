"""Architecture presets shared by the models: defaults, then a named preset, then explicit arguments."""

from diffscale.errors import ConfigError, closest


def merge_preset(model: str, defaults: dict, presets: dict[str, dict], preset: str | None, overrides: dict) -> dict:
    """`defaults`, then `presets[preset]`, then every override that is not None (an explicit argument wins).
    An unknown preset is a ConfigError naming `model` and the closest preset."""
    cfg = dict(defaults)
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{model}: preset: unknown preset '{preset}'; expected one of {', '.join(presets)} "
                              f"(closest: {closest(preset, presets)})")
        cfg.update(presets[preset])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def check_positive_ints(model: str, cfg: dict, keys: tuple[str, ...]) -> None:
    """Each of `keys` is a positive integer (not a bool); a ConfigError names the first that is not."""
    for key in keys:
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ConfigError(f"{model}: {key}: expected a positive integer, got {cfg[key]!r}" + (
                " (give a preset or img_channels)" if key == "img_channels" else ""))
