"""A small residual MLP denoiser body for 2D points (the tree toy of Karras et al. 2024, "autoguidance").

Pure nn.Module: no preconditioning (that is `diffusion.edm.EDMPrecond`) and no distributed code.
"""

import torch
from torch import nn

from diffscale.registry import MODELS


class ToyBlock(nn.Module):
    """Pre-norm residual block; one FSDP shard unit."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(self.norm(h)))))


@MODELS.register_module()
class ToyMLP(nn.Module):
    """F(x_in[B, in_dim], noise_labels[B], class_labels[B, num_classes] one-hot) -> [B, out_dim] (out_dim defaults
    to in_dim; 2 in_dim for a DDPM network that also predicts its variance)."""

    def __init__(self, in_dim: int = 2, num_classes: int = 2, hidden_dim: int = 64, num_layers: int = 4,
                 out_dim: int | None = None):
        super().__init__()
        self.in_dim, self.num_classes = in_dim, num_classes
        out_dim = in_dim if out_dim is None else out_dim
        self.inp = nn.Linear(in_dim + 1 + num_classes, hidden_dim)
        self.blocks = nn.ModuleList(ToyBlock(hidden_dim) for _ in range(num_layers))
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, noise_labels.reshape(-1, 1).to(x.dtype), class_labels.to(x.dtype)], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.out(nn.functional.silu(h))
