"""Rectified flow (Liu et al. 2022; the flow-matching loss of Lipman et al. 2023, SD3's logit-normal t).

Time runs as in the latent-flow seed: x_t = (1 - t) x0 + t eps, so t = 0 is data and t = 1 is noise; the network
predicts the velocity v = dx_t/dt = eps - x0 and the loss is its MSE. SiT and LightningDiT run time the other way
(t = 1 is data, x_t = t x0 + (1 - t) eps, v = x0 - eps): their t is our 1 - t and their velocity our -v.

t is drawn uniformly or logit-normal, t = sigmoid(n), n ~ N(m, s^2) (SD3 Sec. 3.1; m = 0, s = 1 by default), then
optionally shifted, t' = shift t / (1 + (shift - 1) t) (SD3 eq. 23, LightningDiT's timestep shift; shift > 1
spends more steps near noise, as larger images need).
"""

import torch
from torch import nn

from diffscale.diffusion.base import Cond, Objective
from diffscale.diffusion.ddpm import drop_labels
from diffscale.errors import ConfigError
from diffscale.registry import OBJECTIVES

T_SAMPLINGS = ("uniform", "logit_normal")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = shift t / (1 + (shift - 1) t): a monotone map of [0, 1] onto itself (1 is the identity)."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps for t [B] broadcast over the example's dims."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


@OBJECTIVES.register_module()
class RectifiedFlowLoss(Objective):
    """The flow-matching loss of the one part `model`, a velocity network net(x_t, t [B] in [0, 1], labels) with
    label -1 the null class. The condition is (t [B], unit noise [B, ...], label-drop flags [B]), so curation and
    validation score it on fixed noise like any other objective."""

    def __init__(self, t_sampling: str = "logit_normal", logit_mean: float = 0.0, logit_std: float = 1.0,
                 shift: float = 1.0, p_uncond: float = 0.1, reduction: str = "mean"):
        if t_sampling not in T_SAMPLINGS:
            raise ConfigError(f"objective.t_sampling: expected one of {', '.join(T_SAMPLINGS)}, got {t_sampling!r}")
        if not logit_std > 0:
            raise ConfigError(f"objective.logit_std: expected a positive number, got {logit_std!r}")
        if not shift > 0:
            raise ConfigError(f"objective.shift: expected a positive number, got {shift!r}")
        if not 0.0 <= p_uncond < 1.0:
            raise ConfigError(f"objective.p_uncond: expected a probability in [0, 1), got {p_uncond!r}")
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"objective.reduction: expected 'mean' or 'sum', got {reduction!r}")
        self.t_sampling, self.logit_mean, self.logit_std = t_sampling, float(logit_mean), float(logit_std)
        self.shift, self.p_uncond, self.reduction = float(shift), float(p_uncond), reduction

    def sample_t(self, n: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        """t [n] in (0, 1) from the configured density, shifted."""
        if self.t_sampling == "uniform":
            t = torch.rand(n, device=device, generator=generator)
        else:
            t = torch.sigmoid(torch.randn(n, device=device, generator=generator) * self.logit_std + self.logit_mean)
        return shift_time(t, self.shift)

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> Cond:
        B = x.shape[0]
        t = self.sample_t(B, x.device, generator)
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        drop = torch.rand(B, device=x.device, generator=generator) < self.p_uncond
        return {"t": t, "noise": noise, "drop": drop}

    def per_example(self, model: nn.Module, batch: dict, cond: Cond) -> torch.Tensor:
        """MSE of the predicted velocity against eps - x0, per example [B] (float32)."""
        x0, noise, t = batch["x"], cond["noise"], cond["t"]
        labels = drop_labels(batch.get("label"), cond.get("drop"))
        v = model(interpolate(x0, noise, t), t, labels)
        err = (v.float() - (noise.float() - x0.float())).square().flatten(1)
        return err.mean(1) if self.reduction == "mean" else err.sum(1)

    def condition_logs(self, cond: Cond) -> dict[str, torch.Tensor]:
        """The batch's mean t (TensorBoard `train/mean_t`): what the t density and shift give."""
        return {"mean_t": cond["t"].float().mean().detach()}

    def elements_per_score(self, x: torch.Tensor) -> int:
        """How many elements one example's loss sums over (curation divides by it to score per element)."""
        return x[0].numel() if self.reduction == "sum" else 1
