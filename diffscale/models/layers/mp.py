"""Magnitude-preserving (MP) layers of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics
of Diffusion Models", Sec. 2 and Appendix B). Each keeps unit second moment of unit-variance inputs.

Weight normalisation: the forward always uses w / ||w|| per output channel (traditional weight normalisation,
a pure function of the parameter, so gradients are the same under DDP, FSDP2 and ZeRO). Forced weight
normalisation (eq. 66: renormalise the stored weights before every step, which keeps the effective learning
rate from decaying as ||w|| grows) mutates the parameter in place; see `force_weight_norm_` for where that
persists.
"""

import math

import torch
from torch import nn


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x divided by (eps + its RMS over `dim`) (default: all dims but the first): unit RMS per slice."""
    dim = tuple(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    n_elems = math.prod([x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim)])  # a list: no graph break
    return x / (eps + norm / math.sqrt(max(n_elems, 1))).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its RMS under a unit normal input, 0.596 (eq. 81)."""
    return nn.functional.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b rescaled to unit magnitude for independent unit inputs (eq. 88); t = 0.3 for the
    residual and attention branches, 0.5 for the noise/class embeddings."""
    dtype = torch.promote_types(a.dtype, b.dtype)  # under autocast one side may be fp32, the other bf16
    return a.to(dtype).lerp(b.to(dtype), t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation weighting a by (1 - t) and b by t with unit total magnitude (eq. 103): the U-Net skips."""
    n_a, n_b = a.shape[dim], b.shape[dim]
    scale = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (scale / math.sqrt(n_a) * (1 - t)), b * (scale / math.sqrt(n_b) * t)], dim=dim)


class MPFourier(nn.Module):
    """cos(2 pi (f x + p)) sqrt(2), f ~ N(0, 1), p ~ U(0, 1) (eq. 75): x[B] -> [B, num_channels], unit RMS.
    The buffers come from a fixed seed, so every rank (and a model built on the meta device) agrees."""

    def __init__(self, num_channels: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        freqs = 2 * math.pi * torch.randn(num_channels, generator=gen, device="cpu")
        phases = 2 * math.pi * torch.rand(num_channels, generator=gen, device="cpu")
        self.register_buffer("freqs", freqs.to(torch.get_default_device()))
        self.register_buffer("phases", phases.to(torch.get_default_device()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.flatten().float(), self.freqs.float()) + self.phases.float()
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """MP convolution (kernel (k, k)) or linear layer (kernel ()), no bias (eq. 47).

    forward(x[B, in, H, W] or [B, in], gain) -> [B, out, H, W] or [B, out]: unit-RMS weight rows divided by
    sqrt(fan_in), so unit-variance inputs give outputs of variance gain^2.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = (), force_wn: bool = True):
        super().__init__()
        self.out_channels = out_channels
        self.force_wn = force_wn  # renormalise the stored weight in training forwards (see force_weight_norm_)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        if not self.weight.is_meta:  # start on the unit sphere, where forced normalisation keeps it
            with torch.no_grad():
                self.weight.copy_(normalize(self.weight))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        if self.training and self.force_wn:
            # Forced weight normalisation (eq. 66) as in EDM2, for a model trained outside our trainer. Right only
            # where this parameter is the master copy (a plain module): under FSDP2 / ZeRO the forward sees gathered
            # copies. The trainer turns this off and runs force_weight_norm_ as a post-step function instead.
            with torch.no_grad():
                self.weight.copy_(normalize(self.weight.float()).to(self.weight.dtype))
        w = normalize(self.weight.float())  # traditional weight normalisation: a pure function of the weight
        w = w * (gain / math.sqrt(w[0].numel()))  # MP scaling: unit-norm rows / sqrt(fan_in)
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)


@torch.no_grad()
def force_weight_norm_(module: nn.Module) -> int:
    """Renormalise every MPConv weight of `module` in place (EDM2 eq. 66); returns how many tensors it touched.

    The trainer hands it to the strategy as a post-step function (`Strategy.post_step`): once on the plain module
    before wrapping, then after each optimizer step on the weights the optimizer updates. It also turns off the
    in-forward renormalisation, which would repeat the same work (and be wrong on gathered copies). Plain
    parameters (one process, DDP) and FSDP2 DTensors sharded on dim 0 (each rank holds whole output channels, so
    the per-row norm is local) are normalised exactly. ZeRO partitions flatten rows across ranks and keep the fp32
    master inside the optimizer, so this cannot reach them after the first call: under DeepSpeed EDM2 trains with
    traditional weight normalisation only.
    """
    count = 0
    for m in module.modules():
        if not isinstance(m, MPConv):
            continue
        m.force_wn = False  # the caller owns forced normalisation from now on: no second pass in the forward
        w = m.weight
        if hasattr(w, "placements"):  # a DTensor (FSDP2)
            if not all(p.is_replicate() or (p.is_shard() and p.dim == 0) for p in w.placements):
                raise ValueError(f"force_weight_norm_: weight sharded as {w.placements}; need Shard(0) or Replicate")
            w = w.to_local()
        if w.numel():
            w.copy_(normalize(w.float()).to(w.dtype))
            count += 1
    return count
