"""Transformer MLPs: SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer") and DiT's GELU MLP.

SwiGLU is w3(silu(w1 x) * w2 x), with w1 and w2 packed as one Linear `w12` (xformers' layout, so its fused kernel
reads the weights in place). On CUDA in fp16 / bf16 (the only dtypes that kernel has), when xformers imports and
its packed fused op runs here (probed once per dtype, as attention.py probes its attention kernel), the forward
calls `xformers.ops.swiglu` with that op; everywhere else it is plain torch (xformers' own fallback would be the
same three matmuls). Both compute the same function (within bf16 rounding).
"""

import functools
import logging

import torch
from torch import nn

from diffscale.models.layers.attention import _xformers_ops, xformers_allowed

log = logging.getLogger("diffscale")


@functools.cache
def swiglu_usable(dtype: torch.dtype) -> bool:
    """True when xformers imports and its packed fused swiglu op runs on this CUDA device in `dtype` (probed
    once)."""
    xops = _xformers_ops()
    if xops is None or not torch.cuda.is_available() or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        x, w = torch.zeros(8, 64, device="cuda", dtype=dtype), torch.zeros(64, 64, device="cuda", dtype=dtype)
        w1, w2 = xops.unbind(torch.zeros(2, 64, 64, device="cuda", dtype=dtype), dim=0)
        xops.swiglu(x, w1, None, w2, None, w, None, op=xops.SwiGLUPackedFusedOp)
    except Exception as exc:  # no kernel for this GPU (sm80+) / build, or an xformers without the op: use torch
        log.warning("xformers is installed but its swiglu op does not run here (%s); using torch", exc)
        return False
    log.info("mlp backend: xformers.ops.swiglu (%s)", dtype)
    return True


class SwiGLU(nn.Module):
    """x [..., dim] -> w3(silu(w1 x + b1) * (w2 x + b2)) + b3, [..., out_dim]; w12 = [w1; w2] (rows)."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, bias: bool = True):
        super().__init__()
        self.hidden = hidden
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast the torch path computes in the autocast dtype; the fused op gets it explicitly.
        dtype = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
        if x.is_cuda and xformers_allowed() and swiglu_usable(dtype):
            return self._xformers(x, dtype)
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(nn.functional.silu(gate) * up)

    def _xformers(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        xops = _xformers_ops()
        cast = (lambda p: None if p is None else p.to(dtype))
        w12, b12 = cast(self.w12.weight), cast(self.w12.bias)
        # xformers' unbind keeps w1 and w2 views of one storage, which its packed kernel requires.
        w1, w2 = xops.unbind(w12.view(2, self.hidden, -1), dim=0)
        b1, b2 = (None, None) if b12 is None else xops.unbind(b12.view(2, self.hidden), dim=0)
        return xops.swiglu(x.to(dtype), w1, b1, w2, b2, cast(self.w3.weight), cast(self.w3.bias),
                           op=xops.SwiGLUPackedFusedOp)


class GeluMlp(nn.Module):
    """DiT's MLP (timm's Mlp names): Linear(dim, hidden), GELU with the tanh approximation, Linear(hidden, dim)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
