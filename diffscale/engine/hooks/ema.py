"""EMAHook: keeps classic and/or power-function averages of one part's weights, updated after each of its steps."""

from diffscale.engine.ema import ParamEMA, power_beta, std_to_gamma
from diffscale.engine.hooks.base import Hook
from diffscale.errors import ConfigError
from diffscale.registry import HOOKS


@HOOKS.register_module()
class EMAHook(Hook):
    """`stds`: EDM2 power-function widths (e.g. (0.050, 0.100)); `decays`: classic fixed decays; `part`: the part
    averaged. Averages are named 'pf_0.050', 'decay_0.9999' in checkpoints and exports. The power function's step
    count is the part's own number of optimizer steps (a DMD2 generator steps every 5th iteration)."""

    def __init__(self, stds: tuple[float, ...] = (0.050, 0.100), decays: tuple[float, ...] = (), part: str = "model"):
        if not stds and not decays:
            raise ConfigError("hooks.EMAHook: give at least one of stds or decays")
        self.gammas = {f"pf_{s:.3f}": std_to_gamma(s) for s in stds}
        self.decays = {f"decay_{d}": float(d) for d in decays}
        self.part = self.mirror_part = part

    def default_name(self) -> str:
        return "EMAHook" if self.part == "model" else f"EMAHook.{self.part}"

    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        if self.part not in trainer.strategy.trainable:
            raise ConfigError(f"hooks.{self.name}.part: '{self.part}' is not a trainable part of this run "
                              f"(trainable: {', '.join(trainer.strategy.trainable)})")
        self.ema = ParamEMA(trainer.strategy.param_tensors(self.part), list(self.gammas) + list(self.decays))
        self.param_mirrors = self.ema.averages

    def betas(self, step: int) -> dict[str, float]:
        betas = {k: power_beta(g, step) for k, g in self.gammas.items()}
        betas.update(self.decays)
        return betas

    def after_step(self, metrics: dict) -> None:
        if metrics["stepped"].get(self.part) == "ok":
            params = self.trainer.strategy.param_tensors(self.part)
            self.ema.update(params, self.betas(self.trainer.part_steps[self.part]))
