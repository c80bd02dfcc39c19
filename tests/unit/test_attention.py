"""The attention dispatch against a naive softmax(q k^T / sqrt(d)) v, and xformers against SDPA on a GPU."""

import logging
import math

import pytest
import torch

from diffscale.models.layers import attention as A


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    weights = (q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    return weights @ v.double()


def qkv(device: str, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device).manual_seed(seed)
    return [torch.randn(2, 3, 50, 32, generator=gen, device=device).to(dtype) for _ in range(3)]


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_cpu_uses_sdpa_and_matches_naive():
    q, k, v = qkv("cpu", torch.float32)
    logger, handler = logging.getLogger("diffscale"), Records()
    level = logger.level
    logger.addHandler(handler)  # our own handler: setup_logging may have turned propagation off
    logger.setLevel(logging.INFO)
    A._logged.clear()
    try:
        out = A.attention(q, k, v)
        A.attention(q, k, v)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert out.shape == q.shape
    assert torch.allclose(out.double(), naive(q, k, v), atol=1e-5)
    # Logged once, and the CPU never takes xformers (it has no CPU kernels).
    assert handler.messages == ["attention backend: torch scaled_dot_product_attention"]


def test_edm2_block_attention_is_cosine_attention():
    """Block.attend against an independent computation: 1x1 qkv projection, channels laid out [head][d][q|k|v],
    q, k, v scaled to unit RMS per head and pixel, naive softmax attention, 1x1 output projection."""
    from diffscale.models.edm2_unet import Block

    torch.manual_seed(0)
    block = Block(32, 32, emb_channels=8, attention=True, channels_per_head=16).eval()
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        got = block.attend(x)
        w_qkv = block.attn_qkv.weight.flatten(1).double()
        w_qkv = w_qkv / w_qkv.norm(dim=1, keepdim=True)  # unit rows: the MP 1x1 convolution
        y = torch.einsum("oc,bcn->bon", w_qkv, x.flatten(2).double()).reshape(2, 2, 16, 3, 16)
        y = y / y.square().mean(2, keepdim=True).sqrt()  # per-head, per-pixel unit RMS (cosine attention)
        q, k, v = (y[:, :, :, i].transpose(2, 3) for i in range(3))
        out = naive(q, k, v).transpose(2, 3).reshape(2, 32, 16)
        w_proj = block.attn_proj.weight.flatten(1).double()
        expected = torch.einsum("oc,bcn->bon", w_proj / w_proj.norm(dim=1, keepdim=True), out).reshape(2, 32, 4, 4)
    assert torch.allclose(got.double(), expected, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_xformers_matches_sdpa_on_gpu(dtype, atol):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    q, k, v = qkv("cuda", dtype)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(sdpa.double(), naive(q, k, v), atol=atol)
    if not A.xformers_usable(dtype):
        pytest.skip("xformers is not installed (pip install -e '.[xformers]') or its kernels do not load")
    assert torch.allclose(A.attention(q, k, v).double(), sdpa.double(), atol=atol)
