"""Small stand-in feature networks for tests about the math and the plumbing, not the pre-trained networks."""

import torch
from torch import nn


class FlattenFeatures(nn.Module):
    """uint8 [B, 3, H, W] -> [B, 3 H W] in [0, 1]: features that differ between images, at no cost."""

    output_dim = 3 * 4 * 4  # of images_of()'s default size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float() / 255


class FixedLogits(nn.Module):
    """Logits read from a table by the image's first pixel value (its row index): images_of() rows 0..N-1."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images[:, 0, 0, 0].long()]


def images_of(n: int, gen: torch.Generator, size: int = 4) -> torch.Tensor:
    """n random uint8 images [n, 3, size, size] whose first pixel is the row index."""
    x = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x
