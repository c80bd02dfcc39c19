"""Rotary position embeddings (Su et al. 2021, "RoFormer"), 1-D and 2-D axial, for q and k of shape [B, heads, N, d].

Channels pair up as (2j, 2j + 1) (interleaved, the layout of the rotary-embedding-torch package the FlowDiT seed
uses and of LightningDiT's); pair j of a token at position p turns by the angle p * theta^(-2j / d). A query at p
and a key at p' then score q . R(p' - p) k: attention sees only relative positions.

2-D axial (LightningDiT): the first d / 2 channels rotate with the row index, the last d / 2 with the column
index, each half with the 1-D frequencies of a d / 2 head.

The tables are float32 and the rotation runs in float32, so bf16 activations lose no angle precision.
"""

import torch


def rope_1d(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [N] (any real) -> (cos, sin), each [N, dim / 2] float32 on positions' device; dim even."""
    if dim % 2:
        raise ValueError(f"rope_1d: dim must be even, got {dim}")
    exponents = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim
    angles = positions.float()[:, None] * theta ** -exponents[None, :]  # [N, dim / 2]
    return angles.cos(), angles.sin()


def rope_2d(rows: torch.Tensor, cols: torch.Tensor, dim: int, theta: float = 10000.0) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Axial tables: rows [N], cols [N] -> (cos, sin), each [N, dim / 2]; pairs 0..dim/4-1 follow the row, the
    rest the column. dim divisible by 4."""
    if dim % 4:
        raise ValueError(f"rope_2d: dim must be divisible by 4, got {dim}")
    row_cos, row_sin = rope_1d(rows, dim // 2, theta)
    col_cos, col_sin = rope_1d(cols, dim // 2, theta)
    return torch.cat([row_cos, col_cos], dim=-1), torch.cat([row_sin, col_sin], dim=-1)


def grid_positions(height: int, width: int, device: torch.device | str | None = None) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """(rows, cols) [height * width] of a height x width token grid in raster order (Conv2d -> flatten(2))."""
    index = torch.arange(height * width, device=device)
    return index // width, index % width


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., N, d] by tables [N, d / 2]: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos) per pair."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
