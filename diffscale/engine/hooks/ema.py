"""EMAHook: keeps classic and/or power-function averages of one part's weights, updated after each of its steps."""

from diffscale.engine.ema import ParamEMA, power_beta, std_to_gamma
from diffscale.engine.hooks.base import Hook
from diffscale.errors import ConfigError
from diffscale.registry import HOOKS


@HOOKS.register_module()
class EMAHook(Hook):
    """`stds`: EDM2 power-function widths (e.g. (0.050, 0.100)); `decays`: classic fixed decays; `part`: the part
    averaged. Averages are named 'pf_0.050', 'decay_0.9999' in checkpoints and exports. The power function's step
    count is the part's own number of optimizer steps (a DMD2 generator steps every 5th iteration).

    `interval`: the classic decays update every `interval`-th step of the part (the latent-flow seed: decay 0.99
    every 100 steps, an average over about 10k steps that costs 1% of the updates); the power-function averages
    update at every step, since their profile (EDM2 eq. 3) is defined per step."""

    def __init__(self, stds: tuple[float, ...] = (0.050, 0.100), decays: tuple[float, ...] = (), part: str = "model",
                 interval: int = 1):
        if not stds and not decays:
            raise ConfigError("hooks.EMAHook: give at least one of stds or decays")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ConfigError(f"hooks.EMAHook.interval: expected a positive integer, got {interval!r}")
        self.interval = interval
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
        """The decay of each average at the part's optimizer step `step` (1-based); an average that does not
        update at this step is left out."""
        betas = {k: power_beta(g, step) for k, g in self.gammas.items()}
        if step % self.interval == 0:
            betas.update(self.decays)
        return betas

    def after_step(self, metrics: dict) -> None:
        if metrics["stepped"].get(self.part) == "ok":
            params = self.trainer.strategy.param_tensors(self.part)
            self.ema.update(params, self.betas(self.trainer.part_steps[self.part]))
