"""EDM preconditioning and loss (Karras et al. 2022, "Elucidating..."; EDM2 2024 learned log-variance).

Preconditioning (EDM Table 1): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with
c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
c_noise = ln(sigma) / 4, sd = sigma_data.
Loss (EDM2 eq. 4 with learned uncertainty u(sigma) = logvar):
L = (weight / exp(logvar)) ||D - y||^2 + logvar, weight = (sigma^2 + sd^2) / (sigma sd)^2,
ln sigma ~ N(P_mean, P_std^2).
EDM2Precond is the same preconditioning around the EDM2 U-Net (models/edm2_unet.py) with EDM2's MP log-variance
head. EDM2 adds u per element and sums over the example's elements (its training loop: loss.sum() / batch), i.e.
EDMLoss(reduction='sum'); 'mean' divides that by the element count (same optimum, gradients n times smaller).
"""

import math

import torch
from torch import nn

from diffscale.diffusion.base import Cond, Objective
from diffscale.errors import ConfigError
from diffscale.models.layers.mp import MPConv, MPFourier, force_weight_norm_
from diffscale.registry import MODELS, OBJECTIVES, build


class FourierEmbedding(nn.Module):
    """cos(2 pi (f x + p)) features with fixed random f ~ N(0, 1), p ~ U(0, 1), seeded so every rank agrees."""

    def __init__(self, num_channels: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(num_channels, generator=gen))
        self.register_buffer("phases", torch.rand(num_channels, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.flatten().float(), self.freqs) + self.phases
        return torch.cos(2 * math.pi * y) * math.sqrt(2)  # sqrt(2): unit second moment


def preconditioning(sigma: torch.Tensor, sigma_data: float, ndim: int) -> tuple[torch.Tensor, ...]:
    """EDM Table 1: c_skip, c_out, c_in [B, 1, ...] (broadcastable over an input of `ndim` dims) and c_noise [B]
    for noise levels sigma [B], in float32."""
    sigma = sigma.float().reshape(-1, *([1] * (ndim - 1)))
    sd = sigma_data
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sd**2 + sigma**2).sqrt()
    return c_skip, c_out, c_in, sigma.flatten().log() / 4


@MODELS.register_module()
class EDMPrecond(nn.Module):
    """Wraps a denoiser body `net` (a config dict or module) with EDM preconditioning.

    forward(x[B, ...], sigma[B], class_labels[B] int or [B, label_dim] float | None) -> D(x) [B, ...];
    with return_logvar=True also the learned per-sigma log-variance [B]. logvar_channels=0 builds no log-variance
    head (EDM's EDMPrecond, e.g. around an imported SongUNet): train it with EDMLoss(learned_logvar=False).
    return_features=True returns the body's bottleneck features at the preconditioned input instead of D(x) (a body
    that has them, e.g. SongUNet: the input of DMD2's GAN head, models/gan_head.py).
    """

    def __init__(self, net: dict | nn.Module, sigma_data: float = 0.5, label_dim: int = 0, logvar_channels: int = 128):
        super().__init__()
        self.net = build(MODELS, net, "model.net") if isinstance(net, dict) else net
        self.sigma_data = sigma_data
        self.label_dim = label_dim
        self.logvar_fourier = self.logvar_linear = None  # logvar_channels=0: no head (EDM's own EDMPrecond)
        if logvar_channels:
            self.logvar_fourier = FourierEmbedding(logvar_channels)
            self.logvar_linear = nn.Linear(logvar_channels, 1)
            nn.init.zeros_(self.logvar_linear.weight)  # start at logvar = 0: plain EDM weighting
            nn.init.zeros_(self.logvar_linear.bias)

    def one_hot(self, class_labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if class_labels is None:  # unconditional: the all-zero label, as in CFG training
            return torch.zeros(batch, self.label_dim, device=device)
        if class_labels.ndim == 1:
            return nn.functional.one_hot(class_labels.long(), self.label_dim).float()
        return class_labels.float()

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        return_logvar: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data, x.ndim)
        labels = self.one_hot(class_labels, x.shape[0], x.device)
        if return_features:
            return self.net(c_in * x, c_noise, labels, return_features=True)
        F_x = self.net(c_in * x, c_noise, labels)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if not return_logvar:
            return D_x
        if self.logvar_linear is None:
            raise ConfigError("EDMPrecond: return_logvar=True, but the model was built with logvar_channels=0 (no "
                             "learned log-variance head); use objective.learned_logvar=False")
        # clone(): return a fresh tensor, not a view; FSDP2 hooks the outputs of a sharded module.
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1).clone()
        return D_x, logvar


@MODELS.register_module()
class EDM2Precond(nn.Module):
    """EDM preconditioning around an EDM2 network (Karras et al. 2024, Sec. 2 and App. B.2).

    forward(x[B, C, H, W], sigma[B], class_labels[B] int or [B, label_dim] one-hot float | None) -> D(x);
    with return_logvar=True also u(sigma) [B], the learned log-variance of EDM2 eq. 21: an MP Fourier
    embedding of c_noise followed by an MP linear layer (no bias), trained only through the loss.
    The network's label_dim is the precond's; int labels are one-hot encoded, None is the zero label.
    """

    def __init__(self, net: dict | nn.Module, sigma_data: float = 0.5, logvar_channels: int = 128):
        super().__init__()
        self.net = build(MODELS, net, "model.net") if isinstance(net, dict) else net
        self.sigma_data = sigma_data
        self.label_dim = getattr(self.net, "label_dim", 0)
        self.logvar_fourier = MPFourier(logvar_channels, seed=1)  # seed 1: not the network's noise embedding
        self.logvar_linear = MPConv(logvar_channels, 1)

    def force_weight_norm_(self) -> int:
        """Forced weight normalisation (EDM2 eq. 66) of every MP weight, network included, in place. The trainer
        hands it to the strategy as a post-step function of this part (`Strategy.post_step`): once before the
        first forward, then after every optimizer step, on the weights the optimizer updates."""
        return force_weight_norm_(self)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        return_logvar: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.float()
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data, x.ndim)
        labels = None
        if self.label_dim and class_labels is not None:
            labels = (nn.functional.one_hot(class_labels.long(), self.label_dim) if class_labels.ndim == 1
                      else class_labels).float()
        F_x = self.net(c_in * x, c_noise, labels)
        D_x = c_skip * x + c_out * F_x.float()
        if not return_logvar:
            return D_x
        # clone(): a fresh tensor, not a view; FSDP2 hooks the outputs of a sharded module.
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1).float().clone()
        return D_x, logvar


@OBJECTIVES.register_module()
class EDMLoss(Objective):
    """Per-example EDM / EDM2 loss of the one part `model`; the condition is (sigma [B], unit noise [B, ...])."""

    def __init__(
        self,
        P_mean: float = -1.2,  # mean of ln(sigma)
        P_std: float = 1.2,  # std of ln(sigma)
        sigma_data: float = 0.5,  # std of the data
        learned_logvar: bool = True,  # EDM2 uncertainty weighting; False is plain EDM
        reduction: str = "mean",  # over the non-batch dims of one example: 'mean' or 'sum' (EDM2 sums)
    ):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"objective.reduction: expected 'mean' or 'sum', got '{reduction}'")
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data
        self.learned_logvar, self.reduction = learned_logvar, reduction

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> Cond:
        """sigma [B] with ln sigma ~ N(P_mean, P_std^2) and unit noise [B, ...], from `generator` on x's device."""
        rnd = torch.randn(x.shape[0], device=x.device, generator=generator)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        return {"sigma": sigma, "noise": noise}

    def per_example(self, model: nn.Module, batch: dict, cond: Cond) -> torch.Tensor:
        """Loss of each example [B] (float32)."""
        x, sigma = batch["x"], cond["sigma"]
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        # Plain EDM (learned_logvar=False) asks for no log-variance: the model need not have a head.
        out = model(x + cond["noise"] * s, sigma, batch.get("label"), return_logvar=self.learned_logvar)
        D_x, logvar = out if self.learned_logvar else (out, None)
        weight = (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        err = (weight * (D_x.float() - x.float()) ** 2).flatten(1)
        err = err.mean(1) if self.reduction == "mean" else err.sum(1)
        if not self.learned_logvar:
            return err
        n = 1 if self.reduction == "mean" else x[0].numel()
        return err / logvar.float().exp() + n * logvar.float()

    def elements_per_score(self, x: torch.Tensor) -> int:
        """How many elements one example's loss sums over (curation divides by it to score per element)."""
        return x[0].numel() if self.reduction == "sum" else 1
