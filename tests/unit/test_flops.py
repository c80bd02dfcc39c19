"""FLOPs counting (diffscale/evaluation/flops.py) against hand counts: a small conv + linear + attention model
exactly, and EDM2UNet tiny-xxs against an analytic count from its modules' output sizes."""

import pytest
import torch
from torch import nn

from diffscale.evaluation.flops import forward_flops, gflops_per_sample
from diffscale.models.edm2_unet import EDM2UNet
from diffscale.models.layers.mp import MPConv

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class ConvLinearAttention(nn.Module):
    """x[B, 3, 10, 10] -> conv 3x3 (3 -> 8) -> 100 tokens of 8 -> linear (8 -> 16) -> 2 heads of 8 -> SDPA."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.linear = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tokens = self.linear(self.conv(x).flatten(2).transpose(1, 2))  # [B, 100, 16]
        q = tokens.reshape(b, 100, 2, 8).transpose(1, 2)  # [B, heads 2, N 100, d 8]
        return nn.functional.scaled_dot_product_attention(q, q, q)


def test_small_model_matches_hand_count():
    model = ConvLinearAttention()
    conv = 2 * 3 * 8 * 3 * 3 * 10 * 10  # 2 Cin Cout k k H W; the bias add is elementwise (not counted)
    linear = 2 * 100 * 8 * 16  # 2 N in out
    attention = 2 * 2 * (100 * 100 * 8) * 2  # 2 FLOPs/MAC x heads x (q k^T and attn v: N N d each)
    x = torch.randn(4, 3, 10, 10)
    assert forward_flops(model, (x,)) == 4 * (conv + linear + attention)
    assert gflops_per_sample(model, (x,)) == pytest.approx((conv + linear + attention) / 1e9, rel=1e-12)


def test_attention_handler_with_different_lengths_and_widths():
    """q [B, h, L, E], k [B, h, S, E], v [B, h, S, Ev]: L S E + L S Ev MACs per (batch, head)."""
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    sdpa = lambda q, k, v: nn.functional.scaled_dot_product_attention(q, k, v)
    assert forward_flops(sdpa, (q, k, v)) == 2 * 2 * 3 * (5 * 7 * 4 + 5 * 7 * 6)
    assert gflops_per_sample(sdpa, (q, k, v), batch_size=1) * 1e9 == pytest.approx(2 * 2 * 3 * 5 * 7 * 10)


def test_modes_and_weights_are_left_alone():
    """The count runs in eval mode without gradients, then restores each submodule's own mode; EDM2's in-forward
    forced weight normalisation (training only) must not touch the weights."""
    net = EDM2UNet(img_channels=3, img_resolution=16, channels=16, channel_mult=(1, 2), num_blocks=1,
                   attn_resolutions=(8,), channels_per_head=16, label_dim=10)
    net.enc[0].eval()
    with torch.no_grad():
        net.conv_in.weight.mul_(3.0)  # off the unit sphere: a training forward would renormalise it
    before = net.conv_in.weight.clone()
    forward_flops(net, (torch.randn(2, 3, 16, 16), torch.randn(2), torch.zeros(2, 10)))
    assert net.training and not net.enc[0].training and net.dec[0].training
    assert torch.equal(net.conv_in.weight, before)


def analytic_flops_per_sample(net: EDM2UNet, resolution: int) -> tuple[float, float]:
    """(all, attention) FLOPs per sample from the modules' shapes seen by forward hooks, without fvcore:
    2 Cin Cout k k H W per MP convolution (H, W of its output), 2 Cin Cout per MP linear layer, and
    2 x 2 N^2 C per attention layer (q k^T and attn v over N = H W tokens, C = heads x d channels; read from the
    input of the attention's output projection)."""
    macs, attention_macs, handles = [], [], []

    def on_conv(module: MPConv, inputs: tuple, output: torch.Tensor) -> None:
        cout, cin = module.weight.shape[:2]
        kernel_area = module.weight[0, 0].numel()
        positions = output[0, 0].numel()  # H W of the output for a conv, 1 for a linear layer ([B, out])
        macs.append(cout * cin * kernel_area * positions)

    def on_attention(module: MPConv, inputs: tuple) -> None:
        _, channels, h, w = inputs[0].shape  # the attention's output [B, C, H, W]
        attention_macs.append(2 * (h * w) ** 2 * channels)

    for module in net.modules():
        if isinstance(module, MPConv):
            handles.append(module.register_forward_hook(on_conv))
    for block in (*net.enc, *net.dec):
        if block.num_heads:
            handles.append(block.attn_proj.register_forward_pre_hook(on_attention))
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, resolution, resolution), torch.zeros(1), torch.zeros(1, net.label_dim))
    for handle in handles:
        handle.remove()
    return 2 * (sum(macs) + sum(attention_macs)), 2 * sum(attention_macs)


def test_edm2_tiny_xxs_matches_analytic_count():
    net = EDM2UNet("tiny-xxs")
    analytic, attention = analytic_flops_per_sample(net, 64)
    # 15 attention layers (widths 64, 128, 192, 256 at 64, 32, 16, 8): at 16x16 (C 192) 3 encoder + 4 decoder
    # blocks, at 8x8 (C 256) 3 encoder + 1 bottom + 4 decoder blocks.
    assert attention == 2 * 2 * (7 * 256**2 * 192 + 8 * 64**2 * 256)
    counted = gflops_per_sample(net, (torch.randn(1, 3, 64, 64), torch.zeros(1), torch.zeros(1, 200))) * 1e9
    assert counted == pytest.approx(analytic, rel=1e-3)  # fvcore also counts the nearest upsampling: +0.007%
    assert 22e9 < counted < 23.5e9  # measured 22.68 GFLOPs per sample; fvcore's MACs are half
