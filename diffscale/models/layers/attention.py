"""One attention function for every model: xformers' memory-efficient kernel when it is installed, its kernels
load and the tensors are on CUDA; else torch's scaled_dot_product_attention (which picks flash / efficient /
math kernels itself). xformers is the optional extra `pip install -e ".[xformers]"`.

Usability is decided once per dtype (the import and a tiny probe call), and each backend is logged once.
`prefer('sdpa')` pins the torch kernels (attention here, SwiGLU in mlp.py) for a benchmark's comparison
(tools/benchmarks/flow.py); `prefer(None)` is the default.
"""

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger("diffscale")
_logged: set[str] = set()
_preferred: str | None = None  # None: xformers when usable; 'sdpa': always torch


@contextlib.contextmanager
def prefer(backend: str | None) -> Iterator[None]:
    """Within the block, attention uses `backend`: None (xformers when usable, else SDPA) or 'sdpa'."""
    global _preferred
    if backend not in (None, "sdpa"):
        raise ValueError(f"attention backend: expected None or 'sdpa', got {backend!r}")
    previous, _preferred = _preferred, backend
    try:
        yield
    finally:
        _preferred = previous


def xformers_allowed() -> bool:
    """False inside `prefer('sdpa')`."""
    return _preferred is None


@functools.cache
def _xformers_ops():
    """xformers.ops, or None when xformers is missing or broken (any import error: missing CUDA libs too)."""
    try:
        import xformers.ops as xops
    except Exception as exc:  # an installed but mismatched xformers raises more than ImportError
        log.debug("xformers unavailable: %s", exc)
        return None
    return xops


@functools.cache
def xformers_usable(dtype: torch.dtype) -> bool:
    """True when xformers imports and its kernel runs on this CUDA device in `dtype` (probed once)."""
    xops = _xformers_ops()
    if xops is None or not torch.cuda.is_available():
        return False
    try:
        probe = torch.zeros(1, 8, 1, 64, device="cuda", dtype=dtype)  # [B, N, heads, d]
        xops.memory_efficient_attention(probe, probe, probe)
    except Exception as exc:  # no kernel for this GPU / dtype / build: fall back to SDPA
        log.warning("xformers is installed but its attention kernel does not run here (%s); using SDPA", exc)
        return False
    return True


def _log_once(backend: str) -> None:
    if backend not in _logged:
        _logged.add(backend)
        log.info("attention backend: %s", backend)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape [B, heads, N, d] -> [B, heads, N, d]."""
    # Under autocast SDPA computes in the autocast dtype; do the same for xformers, which ignores autocast.
    dtype = torch.get_autocast_dtype("cuda") if q.is_cuda and torch.is_autocast_enabled("cuda") else q.dtype
    if q.is_cuda and _preferred is None and xformers_usable(dtype):
        _log_once("xformers.memory_efficient_attention")
        q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # xformers takes [B, N, heads, d]
        return _xformers_ops().memory_efficient_attention(q, k, v).transpose(1, 2)  # same scale 1 / sqrt(d)
    _log_once("torch scaled_dot_product_attention")
    return nn.functional.scaled_dot_product_attention(q, k, v)
