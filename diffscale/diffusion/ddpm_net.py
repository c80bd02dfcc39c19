"""DDPMNet: a body F(x, noise_labels, one-hot labels) (the toy MLP, or any EDM-style body) as a DDPM network
forward(x_t, t, labels) -> eps / x0 / v (and variance values), the interface of DDPMLoss and the DDPM samplers.

The timestep enters as t * time_scale (default 1 / 1000: t in [0, 1000) after the objective's rescaling, so the
body sees [0, 1), the range of EDM's c_noise). Integer labels are one-hot encoded; -1 (classifier-free guidance's
null class) and None are the all-zero label.
"""

import torch
from torch import nn

from diffscale.registry import MODELS, build


def one_hot_or_null(labels: torch.Tensor | None, label_dim: int, batch: int, device: torch.device) -> torch.Tensor:
    """[B, label_dim] float: one-hot rows for labels >= 0, zero rows for -1 or when labels is None."""
    if labels is None:
        return torch.zeros(batch, label_dim, device=device)
    if labels.ndim == 2:  # already one-hot / soft
        return labels.float()
    valid = labels >= 0
    return nn.functional.one_hot(labels.long().clamp(min=0), label_dim).float() * valid[:, None]


@MODELS.register_module()
class DDPMNet(nn.Module):
    def __init__(self, net: dict | nn.Module, label_dim: int = 0, time_scale: float = 1e-3):
        super().__init__()
        self.net = build(MODELS, net, "model.net") if isinstance(net, dict) else net
        self.label_dim, self.time_scale = label_dim, time_scale

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = one_hot_or_null(class_labels, self.label_dim, x.shape[0], x.device)
        return self.net(x, t.float() * self.time_scale, labels)
