"""DDPM U-Net (the seed's block U-Net): parameter counts against a count by formula from the layer shapes and
against the seed's own code, shapes, every block type, null labels, FSDP units, batch independence, the
attention blocks against naive references, FLOPs against an analytic count, and config errors."""

import copy
import math

import pytest
import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.models.ddpm_unet import (
    PRESETS,
    ChannelAttention,
    ClassAttention,
    ConvNeXtBlock,
    DDPMUNet,
    ResBlock,
    WindowAttention,
    eca_kernel_size,
    resolve_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# The seed's own network (src/models/diff_model.py: U_Net + Linear(num_classes, c_dim, bias=False) + the two
# ConvNeXt heads) built with each preset's settings and counted with the seed's code (a scratch copy, not in this
# repo). Ours has one more class row, the null class (c_dim parameters), where the seed multiplies by zero.
SEED_COUNTS = {"imagenet64_res_res_atn": 212_930_915, "imagenet64_res_res": 197_566_127,
               "cifar10_improved": 51_320_731, "tiny": 636_423}
BLOCK_CLASSES = {"res": ResBlock, "conv": ConvNeXtBlock, "clsAtn": ClassAttention, "atn": WindowAttention,
                 "chnAtn": ChannelAttention}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_net(preset: str | None = None, **overrides) -> DDPMUNet:
    with torch.device("meta"):  # shapes only
        return DDPMUNet(preset, **overrides)


# ---- the architecture by formula: (parameters, multiply-adds per sample) of each layer from its shapes ----------
def conv(cin: int, cout: int, k: int, out_res: int, groups: int = 1) -> tuple[int, int]:
    weights = cin // groups * cout * k * k
    return weights + cout, weights * out_res**2


def linear(cin: int, cout: int) -> tuple[int, int]:
    return cin * cout + cout, cin * cout


def total(*parts: tuple[int, int]) -> tuple[int, int]:
    return sum(p for p, _ in parts), sum(m for _, m in parts)


def block(kind: str, cin: int, cout: int, r: int, cfg: dict, c: int | None) -> tuple[int, int]:
    """One block at an r x r map. GroupNorm: 2 parameters per channel, no multiply-adds counted."""
    t, norm = cfg["t_dim"], lambda ch: (2 * ch, 0)
    skip = conv(cin, cout, 1, r) if cin != cout else (0, 0)
    cond = (lambda n: linear(c, n)) if c else (lambda n: (0, 0))
    if kind == "res":  # t/c projections, two 3x3 convs with norms, 1x1 skip
        return total(linear(t, cout), cond(cout), conv(cin, cout, 3, r), norm(cout), conv(cout, cout, 3, r),
                     norm(cout), skip)
    if kind == "conv":  # depthwise 7x7, norm, t/c projections (input width), 1x1 up to 2x, 1x1 down, skip
        return total(conv(cin, cin, 7, r, groups=cin), norm(cin), linear(t, cin), cond(cin),
                     conv(cin, 2 * cin, 1, r), conv(2 * cin, cout, 1, r), skip)
    if kind == "clsAtn":  # norm, query and key from c, 1x1 proj, norm; attention: C x C weights on r rows of r
        attn = (0, 2 * cin * cin * r * r)
        return total(norm(cin), linear(c, cin), linear(c, cin), conv(cin, cin, 1, r), norm(cin), attn)
    if kind == "atn":  # norm, 1x1 qkv, 1x1 proj; attention: windows of p x p tokens of width C
        p = min(cfg["atn_resolution"], r)
        return total(norm(cin), conv(cin, 3 * cin, 1, r), conv(cin, cin, 1, r), (0, 2 * p * p * cin * r * r))
    k = int(math.log2(cin) / 2 + 0.5)  # chnAtn: ECA kernel |log2(C) / 2 + 1 / 2|, made odd; no bias
    k += 1 - k % 2
    return k, k * cin


def stage(cin: int, cout: int, r: int, cfg: dict, c: int | None) -> tuple[int, int]:
    parts, width = [], cin
    for kind in cfg["blk_types"]:
        parts.append(block(kind, width, cout, r, cfg, c))
        width = cout if kind in ("res", "conv") else width
    return total(*parts)


def formula(preset: str) -> tuple[int, int]:
    cfg = resolve_config(preset, {})
    img, res, levels, t = cfg["img_channels"], cfg["img_resolution"], cfg["num_levels"], cfg["t_dim"]
    c = cfg["c_dim"] if cfg["num_classes"] and cfg["c_dim"] != -1 else None
    out = img * (2 if cfg["learn_sigma"] else 1)
    w = [cfg["emb_ch"] * 2 ** (cfg["ch_mult"] * lv) for lv in range(levels + 1)]
    parts = [conv(img, w[0], 7, res), linear(t, t), linear(t, t), ((cfg["num_classes"] + 1) * c if c else 0, 0)]
    for lv in range(1, levels + 1):  # stage at res / 2^(lv-1), then the stride-2 3x3 conv
        r = res >> (lv - 1)
        parts += [stage(w[lv - 1], w[lv], r, cfg, c), conv(w[lv], w[lv], 3, r // 2)]
    bottom, r = w[-1], res >> levels
    parts += [stage(bottom, bottom, r, cfg, c), block("chnAtn", bottom, bottom, r, cfg, c),
              stage(bottom, bottom, r, cfg, c)]
    for lv in range(levels, 0, -1):  # transposed 4x4 conv (multiply-adds: per input pixel), then the stage
        r_in = res >> lv
        parts += [(w[lv] * w[lv] * 16 + w[lv], w[lv] * w[lv] * 16 * r_in**2),
                  stage(2 * w[lv], w[lv - 1], 2 * r_in, cfg, c)]
    parts += [stage(w[0], w[0], res, cfg, c), stage(w[0], out, res, cfg, c), conv(out, out, 7, res)]
    for _ in range(out // img):  # one plain ConvNeXt head per output half
        parts.append(total(conv(img, img, 7, res, groups=img), (2 * img, 0), conv(img, 2 * img, 1, res),
                           conv(2 * img, img, 1, res)))
    return total(*parts)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parameter_count_matches_formula_and_seed(preset):
    net = meta_net(preset)
    assert count(net) == formula(preset)[0]
    null_row = 0 if net.class_emb is None else net.class_emb.embedding_dim
    assert count(net) == SEED_COUNTS[preset] + null_row


def test_preset_sizes():
    """The figures the README quotes; 3 levels halve 64 three times (bottom 8x8), as in the seed."""
    assert {p: count(meta_net(p)) for p in PRESETS} == {
        "imagenet64_res_res_atn": 212_931_427, "imagenet64_res_res": 197_566_639, "cifar10_improved": 51_320_731,
        "tiny": 636_455}
    net = meta_net("imagenet64_res_res_atn")
    assert [s.blocks[0].conv1.out_channels for s in net.down] == [256, 512, 1024]
    assert (net.label_dim, net.img_channels, net.img_resolution, net.out_channels) == (1000, 3, 64, 6)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shapes(learn_sigma):
    net = DDPMUNet("tiny", learn_sigma=learn_sigma)
    out = net(torch.randn(3, 3, 16, 16), torch.tensor([0.0, 10.0, 999.0]), torch.tensor([0, 9, -1]))
    assert out.shape == (3, 6 if learn_sigma else 3, 16, 16) and net.out_channels == out.shape[1]
    assert net.learn_sigma is learn_sigma and (net.var_head is None) != learn_sigma


@pytest.mark.parametrize("kind", ["res", "conv", "clsAtn", "atn", "chnAtn"])
def test_each_block_type_runs_and_gets_gradients(kind):
    torch.manual_seed(0)
    net = DDPMUNet("tiny", blk_types=f"res,{kind}" if kind != "res" else "res")
    blocks = [m for m in net.modules() if isinstance(m, BLOCK_CLASSES[kind])]
    assert blocks and all(type(b) in (BLOCK_CLASSES[kind], ResBlock) for s in net.down for b in s.blocks)
    net(torch.randn(2, 3, 16, 16), torch.tensor([5.0, 700.0]), torch.tensor([2, 7])).square().mean().backward()
    for name, p in net.named_parameters():
        grad = p.grad if name != "class_emb.weight" else p.grad[1:]  # row 0: the null class, fixed at zero
        assert grad is not None and grad.abs().sum() > 0, name


def test_null_label_equals_none_and_differs_from_a_class():
    torch.manual_seed(0)
    net = DDPMUNet("tiny").eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100.0, 400.0])
    with torch.no_grad():
        null, none, real = net(x, t, torch.tensor([-1, -1])), net(x, t, None), net(x, t, torch.tensor([0, 9]))
    assert torch.equal(null, none)
    assert all((null[i] - real[i]).abs().amax() > 1e-4 for i in range(2))  # the first and the last class
    assert torch.count_nonzero(net.class_emb.weight[0]) == 0  # the seed's null class: the zero vector
    uncond = DDPMUNet("tiny", blk_types="res,atn", c_dim=-1).eval()
    assert uncond.label_dim == 0 and uncond.class_emb is None
    with torch.no_grad():
        assert torch.equal(uncond(x, t, torch.tensor([3, 4])), uncond(x, t))


def test_fsdp_units_cover_all_but_stem_and_head_and_return_fresh_tensors():
    from diffscale.engine.strategies.fsdp import shard_units

    net = DDPMUNet("tiny")
    units = shard_units(net)
    owned = [{id(p) for p in u.parameters()} for u in units]
    assert sum(len(o) for o in owned) == len(set().union(*owned))  # disjoint
    ids = {id(u) for u in units}
    assert not any(id(m) in ids for u in units for m in list(u.modules())[1:])  # no unit nested in another
    root = {id(p) for m in (net.conv_in, net.t_mlp, net.class_emb, net.conv_out, net.eps_head, net.var_head)
            for p in m.parameters()}
    assert set().union(*owned) | root == {id(p) for p in net.parameters()} and not set().union(*owned) & root
    outputs = []
    hooks = [u.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for u in units]
    net(torch.randn(1, 3, 16, 16), torch.tensor([3.0]), torch.tensor([1]))
    for h in hooks:
        h.remove()
    assert len(outputs) == len(units) and all(o._base is None for o in outputs)  # fresh tensors, not views


def test_batch_independence():
    """Example i's output depends on no other example (GroupNorm is per example; no batch statistics)."""
    torch.manual_seed(0)
    net = DDPMUNet("tiny").train()
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    t, labels = torch.tensor([1.0, 500.0, 900.0]), torch.tensor([4, -1, 7])
    out = net(x, t, labels)
    out[0].sum().backward()
    assert x.grad[0].abs().sum() > 0 and torch.count_nonzero(x.grad[1:]) == 0
    with torch.no_grad():
        for i in range(3):
            assert torch.allclose(net(x[i:i + 1], t[i:i + 1], labels[i:i + 1]), out[i:i + 1], atol=1e-5)


def test_window_attention_matches_per_window_reference():
    torch.manual_seed(0)
    blk = WindowAttention(8, window=4, num_heads=2)
    x = torch.randn(2, 8, 8, 8)
    qkv = blk.qkv(blk.norm(x))
    ref = torch.zeros_like(x)
    for i in range(0, 8, 4):
        for j in range(0, 8, 4):
            q, k, v = (qkv[:, n * 8:(n + 1) * 8, i:i + 4, j:j + 4].reshape(2, 2, 4, 16) for n in range(3))
            weights = (q.transpose(-1, -2) @ k / math.sqrt(4)).softmax(-1)  # [B, heads, 16, 16]
            ref[:, :, i:i + 4, j:j + 4] = (v @ weights.transpose(-1, -2)).reshape(2, 8, 4, 4)
    assert torch.allclose(blk(x), x + blk.proj(ref), atol=1e-5)
    small = WindowAttention(8, window=16)(torch.randn(1, 8, 4, 4))  # window larger than the map: the whole map
    assert small.shape == (1, 8, 4, 4)


def test_class_attention_mixes_channels_with_class_weights():
    torch.manual_seed(0)
    blk = ClassAttention(8, c_dim=5)
    x, c = torch.randn(2, 8, 4, 6), torch.randn(2, 5)
    weights = (blk.query(c)[:, :, None] * blk.key(c)[:, None, :] / math.sqrt(8)).softmax(-1)  # [B, C, C]
    ref = x + blk.norm_out(blk.proj(torch.einsum("bcd,bdhw->bchw", weights, blk.norm_in(x))))
    assert torch.allclose(blk(x, None, c), ref, atol=1e-5)


def test_eca_kernel_sizes():
    assert [eca_kernel_size(c) for c in (6, 16, 32, 64, 128, 256, 512, 1024)] == [1, 3, 3, 3, 5, 5, 5, 5]


def test_flops_match_an_analytic_count():
    from diffscale.evaluation.flops import flop_analysis

    net = DDPMUNet("tiny").eval()
    inputs = (torch.randn(2, 3, 16, 16), torch.tensor([3.0, 500.0]), torch.tensor([1, -1]))
    with torch.no_grad():  # what forward_flops runs; one trace for the total and the split by operator
        analysis = flop_analysis(net, inputs)
        flops, ops = 2 * analysis.total(), analysis.by_operator()
    macs = formula("tiny")[1]
    assert ops["conv"] + ops["scaled_dot_product_attention"] + ops["linear"] == 2 * macs  # two samples
    assert 4 * macs < flops < 1.05 * 4 * macs  # fvcore also counts GroupNorm, a few FLOPs per element


def test_explicit_arguments_override_the_preset():
    net = meta_net("imagenet64_res_res", emb_ch=64, blk_types="res, conv", learn_sigma=False)
    assert net.config["emb_ch"] == 64 and net.config["blk_types"] == ("res", "conv")
    assert net.config["num_classes"] == 1000 and net.out_channels == 3 and net.preset == "imagenet64_res_res"
    assert meta_net(img_channels=1, img_resolution=8, num_levels=1, emb_ch=8, t_dim=8).label_dim == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(preset="tinny"), r"preset: unknown preset 'tinny'.*closest: tiny"),
    (dict(preset="tiny", blk_types="res,rse"), r"blk_types: 'rse' is not a block type; expected one of res, conv"),
    (dict(preset="tiny", blk_types="atn,chnAtn"), r"blk_types: .* no 'res' or 'conv'"),
    (dict(preset="tiny", img_resolution=18), r"img_resolution: 18 does not halve num_levels=2 times"),
    (dict(preset="tiny", atn_resolution=3), r"atn_resolution: 3 does not tile the 16x16"),
    (dict(preset="tiny", c_dim=-1), r"blk_types: 'clsAtn' needs class features"),
    (dict(preset="tiny", num_heads=4), r"num_heads: 4 heads do not split 6 channels"),
    (dict(emb_ch=8), r"img_channels: expected a positive integer, got None \(give a preset or img_channels\)"),
    (dict(preset="tiny", t_dim=31), r"t_dim: expected an even width"),
])
def test_bad_values_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        meta_net(**kwargs)


def test_fsdp2_sharded_gradients_equal_plain(single_rank_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    torch.manual_seed(0)
    plain = DDPMUNet("tiny", emb_ch=8, t_dim=16, c_dim=16, num_levels=1)
    mesh = init_device_mesh("cpu", (1,))

    def grads(model: nn.Module) -> torch.Tensor:
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        model(x, torch.tensor([3.0, 600.0]), torch.tensor([2, -1])).square().mean().backward()
        return torch.cat([getattr(p.grad, "full_tensor", lambda g=p.grad: g)().flatten()
                          for _, p in sorted(model.named_parameters())])

    def sharded(policy: MixedPrecisionPolicy) -> nn.Module:
        model = copy.deepcopy(plain)
        for unit in model.fsdp_units():
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        return fully_shard(model, mesh=mesh, mp_policy=policy)

    expected = grads(copy.deepcopy(plain))
    assert torch.allclose(grads(sharded(MixedPrecisionPolicy())), expected, rtol=1e-4, atol=1e-6)
    bf16 = grads(sharded(MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)))
    assert nn.functional.cosine_similarity(bf16, expected, dim=0) > 0.99


@pytest.mark.gpu
def test_cuda_forward_matches_cpu():
    """On CUDA every attention block (clsAtn's channel tokens, atn's windows) goes through the xformers kernel
    where it loads, else SDPA's CUDA kernels: the output matches the CPU's (SDPA) in float32."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    net = DDPMUNet("tiny").eval()
    x, t, labels = torch.randn(3, 3, 16, 16), torch.tensor([0.0, 400.0, 999.0]), torch.tensor([1, -1, 7])
    with torch.no_grad():
        cpu = net(x, t, labels)
        gpu = net.cuda()(x.cuda(), t.cuda(), labels.cuda()).cpu()
    assert torch.allclose(gpu, cpu, atol=2e-4, rtol=1e-4), (gpu - cpu).abs().max()
