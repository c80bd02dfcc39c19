"""EMAHook: keeps classic and/or power-function averages of the weights, updated after every step."""

from diffscale.engine.ema import ParamEMA, power_beta, std_to_gamma
from diffscale.engine.hooks.base import Hook
from diffscale.registry import HOOKS


@HOOKS.register_module()
class EMAHook(Hook):
    """`stds`: EDM2 power-function widths (e.g. (0.050, 0.100)); `decays`: classic fixed decays.
    Averages are named 'pf_0.050', 'decay_0.9999' in checkpoints and exports."""

    def __init__(self, stds: tuple[float, ...] = (0.050, 0.100), decays: tuple[float, ...] = ()):
        if not stds and not decays:
            raise ValueError("hooks.EMAHook: give at least one of stds or decays")
        self.gammas = {f"pf_{s:.3f}": std_to_gamma(s) for s in stds}
        self.decays = {f"decay_{d}": float(d) for d in decays}

    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        self.ema = ParamEMA(trainer.strategy.param_tensors(), list(self.gammas) + list(self.decays))
        self.param_mirrors = self.ema.averages

    def betas(self, step: int) -> dict[str, float]:
        betas = {k: power_beta(g, step) for k, g in self.gammas.items()}
        betas.update(self.decays)
        return betas

    def after_step(self, metrics: dict) -> None:
        if metrics["status"] == "ok":
            self.ema.update(self.trainer.strategy.param_tensors(), self.betas(self.trainer.step))
