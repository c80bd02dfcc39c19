"""DMD2's GAN discriminator (Yin et al. 2024, "Improved Distribution Matching Distillation", Sec. 4.3): a small
convolutional classifier on the fake score network's bottleneck features, trained with the fake score.

`GANHead` maps bottleneck features [B, C, H, W] to one realism logit per example. DMD2's head, for its 8x8
bottleneck (its main/edm/edm_guidance.py `cls_pred_branch`): Conv 4x4 stride 2 (8 -> 4) -> GroupNorm(32) -> SiLU ->
Conv 4x4 stride 4 (4 -> 1) -> GroupNorm(32) -> SiLU -> Conv 1x1 -> 1 logit, at the bottleneck's width throughout.
Here the head is built for the bottleneck the network really has (its `feature_shape()`): one stride-2 stage per
halving while the side is above 4, then one conv whose kernel and stride are the remaining side (4 x 4 stride 4
at DMD2's shape), so an 8x8 bottleneck gets exactly DMD2's layers; EDM's DDPM++ / NCSN++ at 32 px (channel_mult
(2, 2, 2)) have theirs at 8x8 with 256 channels.

The fake score part that carries it is `diffusion.dmd2.FakeScoreWithHead` (an EDMPrecond plus `head`).
"""

import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.registry import MODELS


def _norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with `num_groups` groups (DMD2: 32, i.e. 8 channels a group at 256), fewer where `channels` does not
    divide into them or a group would hold under 4 channels: on the 1x1 map a one-channel group normalises every
    input to 0, and the logit would not depend on the image."""
    groups = max(g for g in range(1, min(num_groups, max(channels // 4, 1)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


@MODELS.register_module()
class GANHead(nn.Module):
    """forward(features [B, in_channels, resolution, resolution]) -> logits [B] float32 (real > 0 > fake).

    Layers keep PyTorch's default initialisation (DMD2's). `channels`: the width of the hidden convolutions;
    None keeps the input's width, as DMD2 does."""

    def __init__(self, in_channels: int, resolution: int, channels: int | None = None, num_groups: int = 32):
        super().__init__()
        for key, value in (("in_channels", in_channels), ("resolution", resolution), ("num_groups", num_groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"GANHead.{key}: expected a positive int, got {value!r}")
        width = in_channels if channels is None else channels
        if not isinstance(width, int) or width < 1:
            raise ConfigError(f"GANHead.channels: expected a positive int or None, got {channels!r}")
        self.in_channels, self.resolution = in_channels, resolution
        layers, c, res = [], in_channels, resolution
        while res > 4:  # DMD2's first stage, repeated for larger bottlenecks: 4x4 stride 2 halves the side
            if res % 2:
                raise ConfigError(f"GANHead.resolution: a {resolution}x{resolution} bottleneck does not halve to "
                                  f"4x4 or less (side {res} is odd)")
            layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), _norm(width, num_groups), nn.SiLU()]
            c, res = width, res // 2
        # DMD2's second stage: the remaining side in one step (4x4 stride 4 -> 1x1 at its shape), then the logit.
        layers += [nn.Conv2d(c, width, res, stride=res), _norm(width, num_groups), nn.SiLU(), nn.Conv2d(width, 1, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.resolution, self.resolution)
        if features.ndim != 4 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"GANHead: expected features [B, {', '.join(map(str, expected))}], got "
                             f"{list(features.shape)}")
        # clone(): a fresh tensor, not a view; FSDP2 hooks the outputs of a sharded module.
        return self.layers(features).reshape(-1).float().clone()
