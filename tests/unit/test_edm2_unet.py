"""EDM2 U-Net: parameter counts against the published sizes, magnitude preservation measured on random inputs,
forced weight normalisation (plain and FSDP2-sharded), shapes and preset overrides."""

import copy

import pytest
import torch
from torch import nn

from diffscale.diffusion.edm import EDM2Precond
from diffscale.models.edm2_unet import PRESETS, EDM2UNet
from diffscale.models.layers.mp import MPConv, MPFourier, force_weight_norm_, mp_cat, mp_silu, mp_sum, normalize

# NVlabs/edm2 reference code counted (published counts), preconditioner's logvar layer included (millions).
PUBLISHED_M = {"img512-xxs": 31.31, "img512-xs": 124.71, "img512-s": 280.21, "img512-m": 497.81,
               "img512-l": 777.50, "img512-xl": 1119.28, "img512-xxl": 1523.16, "tiny-xxs": 31.10,
               "tiny-xs": 124.30}
# A small network that still has every part: two levels, attention at 8x8, class labels.
SMALL = dict(img_channels=3, img_resolution=16, channels=16, channel_mult=(1, 2), num_blocks=1,
             attn_resolutions=(8,), channels_per_head=16, label_dim=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(preset: str, **overrides) -> EDM2Precond:
    with torch.device("meta"):  # shapes only: the 1.5 B-parameter model costs no memory
        return EDM2Precond(EDM2UNet(preset, **overrides))


@pytest.mark.parametrize("preset", sorted(PUBLISHED_M))
def test_parameter_count_matches_published(preset):
    assert count(meta_model(preset)) / 1e6 == pytest.approx(PUBLISHED_M[preset], rel=1e-3)


@pytest.mark.parametrize("size", ["xs", "s", "m", "l", "xl"])
def test_img64_differs_from_img512_by_one_input_and_output_channel(size):
    """Same network on 3 instead of 4 channels: conv_in loses (1 x channels x 3 x 3) weights, out_conv as many."""
    channels = PRESETS[f"img64-{size}"]["channels"]
    assert count(meta_model(f"img512-{size}")) - count(meta_model(f"img64-{size}")) == 2 * channels * 9


def test_explicit_arguments_override_the_preset():
    net = meta_model("tiny-xs", channels=64, dropout=0.2).net
    assert net.config["channels"] == 64 and net.config["dropout"] == 0.2
    assert net.label_dim == 200 and net.img_channels == 3  # the rest stays the preset's
    assert PRESETS["img512-m"]["dropout"] == 0.10 and PRESETS["img512-s"]["dropout"] == 0.0
    with pytest.raises(ValueError, match="unknown preset 'tiny-xss'; closest: tiny-xs"):
        EDM2UNet("tiny-xss")
    with pytest.raises(ValueError, match="give a preset or img_channels"):
        EDM2UNet(channels=16)
    with pytest.raises(ValueError, match="do not split into heads of 64"):
        EDM2UNet("tiny-xxs", channels=16)  # 64-channel heads need widths that are multiples of 64


def test_blocks_are_fsdp_units():
    """Every Block sits in an nn.ModuleList, which strategies/fsdp.py shards one by one."""
    from diffscale.engine.strategies.fsdp import shard_units

    net = meta_model("img512-xs").net
    units = shard_units(net)
    # Encoder: 3 blocks at 64x64, then (down + 3) at 32, 16, 8 = 15. Decoder: 2 at the bottom, then per level
    # (up, except at the bottom) + 4 = 21.
    assert len(units) == 15 + 21 and all(type(u).__name__ == "Block" for u in units)


def unit_normal(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rms(x: torch.Tensor) -> float:
    return x.float().square().mean().sqrt().item()


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
def test_mp_sum_and_cat_keep_unit_magnitude(t):
    a, b = unit_normal(400, 256, seed=1), unit_normal(400, 256, seed=2)
    assert rms(mp_sum(a, b, t)) == pytest.approx(1.0, abs=0.01)
    cat = mp_cat(unit_normal(400, 96, seed=3), unit_normal(400, 32, seed=4), t=t)
    assert rms(cat) == pytest.approx(1.0, abs=0.01)
    # ... and the two parts carry energy in the ratio (1 - t)^2 : t^2, whatever their widths (eq. 103).
    ratio = cat[:, :96].square().sum() / cat[:, 96:].square().sum()
    assert ratio.item() == pytest.approx((1 - t) ** 2 / t**2, rel=0.02)


def test_mp_silu_fourier_and_normalize_keep_unit_magnitude():
    assert rms(mp_silu(unit_normal(1_000_000))) == pytest.approx(1.0, abs=0.01)
    assert rms(MPFourier(512)(unit_normal(2000))) == pytest.approx(1.0, abs=0.02)
    rows = normalize(5 * unit_normal(8, 50, 3, 3)).flatten(1).square().mean(1).sqrt()
    assert torch.allclose(rows, torch.ones(8), atol=1e-3)


@pytest.mark.parametrize(("kernel", "gain"), [((), 1.0), ((3, 3), 1.0), ((1, 1), 0.5)])
def test_mp_conv_output_has_gain_squared_variance(kernel, gain):
    conv = MPConv(64, 48, kernel)
    with torch.no_grad():
        conv.weight.mul_(7.0)  # the stored scale must not matter
    x = unit_normal(256, 64) if not kernel else unit_normal(16, 64, 12, 12)
    y = conv.eval()(x, gain=gain)
    if kernel == (3, 3):
        y = y[:, :, 1:-1, 1:-1]  # the border sees zero padding
    assert rms(y) == pytest.approx(gain, rel=0.03)


def test_block_outputs_stay_near_unit_magnitude():
    """Through every encoder and decoder block, with the embedding's modulation off and on (gain 0 and 1)."""
    torch.manual_seed(0)
    net = EDM2UNet(**SMALL).eval()
    outs = []
    for block in list(net.enc) + list(net.dec):
        block.register_forward_hook(lambda m, inp, out: outs.append(rms(out)))
    labels = nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    with torch.no_grad():
        for gain in (0.0, 1.0):
            for block in list(net.enc) + list(net.dec):
                block.emb_gain.fill_(gain)
            net(unit_normal(8, 3, 16, 16), unit_normal(8), labels)
    assert len(outs) == 2 * (len(net.enc) + len(net.dec)) and min(outs) > 0.6 and max(outs) < 1.7


def test_forward_shapes_and_zero_initial_output():
    torch.manual_seed(0)
    model = EDM2Precond(EDM2UNet(**SMALL)).eval()
    x, sigma = unit_normal(3, 3, 16, 16), torch.tensor([0.1, 1.0, 10.0])
    D, logvar = model(x, sigma, torch.tensor([0, 4, 9]), return_logvar=True)
    assert D.shape == x.shape and logvar.shape == (3,)
    # out_gain starts at 0, so F = 0 and D = c_skip x (EDM2: the network starts as the identity skip).
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.allclose(D, c_skip[:, None, None, None] * x)
    with torch.no_grad():
        model.net.out_gain.fill_(1.0)
    one_hot = nn.functional.one_hot(torch.tensor([0, 4, 9]), 10).float()
    assert torch.allclose(model(x, sigma, torch.tensor([0, 4, 9])), model(x, sigma, one_hot))
    assert model(x, sigma, None).shape == x.shape  # the zero (unconditional) label


def test_forced_weight_normalisation():
    torch.manual_seed(0)
    net = EDM2UNet(**SMALL)
    with torch.no_grad():
        net.out_gain.fill_(1.0)
    x, noise, labels = unit_normal(2, 3, 16, 16), unit_normal(2), nn.functional.one_hot(torch.tensor([1, 2]), 10)
    expected = net.eval()(x, noise, labels.float())
    convs = [m for m in net.modules() if isinstance(m, MPConv)]
    with torch.no_grad():
        for m in convs:
            m.weight.mul_(3.0)
    # Traditional weight normalisation: the output does not depend on the stored scale (up to eps = 1e-4).
    assert torch.allclose(net.eval()(x, noise, labels.float()), expected, rtol=1e-3, atol=1e-3)
    assert all(rms(m.weight) == pytest.approx(3.0, rel=1e-3) for m in convs)  # eval leaves them alone
    out = net.train()(x, noise, labels.float())
    assert torch.allclose(out, expected, atol=1e-5)  # now on the sphere as at the start: the same output
    assert all(rms(m.weight) == pytest.approx(1.0, abs=2e-4) for m in convs)  # forced: back on the sphere
    # The gradient of a normalised weight is orthogonal to each row (why the norm would otherwise grow).
    out.square().mean().backward()
    for m in convs:
        dots = (m.weight.grad.flatten(1) * m.weight.detach().flatten(1)).sum(1)
        assert dots.abs().max() <= 1e-5 * m.weight.grad.norm() * m.weight.norm()
    with torch.no_grad():
        for m in convs:
            m.weight.mul_(2.0)
    assert force_weight_norm_(net) == len(convs) and all(rms(m.weight) == pytest.approx(1.0, abs=2e-4)
                                                           for m in convs)


def test_fsdp2_sharded_training_forward(single_rank_group):
    """Under FSDP2 forced normalisation is force_weight_norm_ on the shards (the strategy's post-step function; its
    first call, before sharding, turns the in-forward pass off): the forward on the shards is then pure, gradients
    equal the plain model's with the same (normalised or not) weights, and bf16 mixed precision runs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from diffscale.engine.strategies.fsdp import shard_units

    torch.manual_seed(0)
    plain = EDM2Precond(EDM2UNet(**dict(SMALL, img_resolution=8, attn_resolutions=(4,))))
    with torch.no_grad():
        for p in plain.parameters():
            if p.numel() == 1:
                p.add_(0.5)  # gains on
            else:
                p.mul_(3.0)  # weights off the sphere
    mesh = init_device_mesh("cpu", (1,))

    def sharded(policy: MixedPrecisionPolicy) -> nn.Module:
        model = copy.deepcopy(plain)
        for m in model.modules():  # as Strategy.prepare leaves it (without normalising, to see nothing else does)
            if isinstance(m, MPConv):
                m.force_wn = False
        for unit in shard_units(model):
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        return fully_shard(model, mesh=mesh, mp_policy=policy)

    def grads(model: nn.Module) -> dict[str, torch.Tensor]:
        D, logvar = model(unit_normal(2, 3, 8, 8), torch.tensor([0.3, 3.0]), torch.tensor([1, 7]),
                          return_logvar=True)
        (D.square().mean() + logvar.sum()).backward()
        return {n: getattr(p.grad, "full_tensor", lambda g=p.grad: g)() for n, p in model.named_parameters()}

    def max_rel_diff(a: dict, b: dict) -> float:
        return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b if b[n].norm() > 0)

    fp32, traditional = sharded(MixedPrecisionPolicy()), copy.deepcopy(plain)
    for m in traditional.modules():
        if isinstance(m, MPConv):
            m.force_wn = False
    expected = grads(traditional)
    assert max_rel_diff(grads(fp32), expected) < 1e-5  # pure forward on the shards
    w = fp32.net.conv_in.weight
    assert rms(w.full_tensor()) == pytest.approx(3.0, rel=1e-3)  # nothing was lost silently: still raw
    fp32.zero_grad()
    assert fp32.force_weight_norm_() == sum(isinstance(m, MPConv) for m in fp32.modules())
    assert rms(w.full_tensor()) == pytest.approx(1.0, abs=2e-4)
    forced = copy.deepcopy(plain)
    assert max_rel_diff(grads(fp32), grads(forced)) < 1e-5  # = EDM2's in-forward forced normalisation
    bf16 = grads(sharded(MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)))
    flat = lambda g: torch.cat([g[n].flatten() for n in sorted(g)])
    assert nn.functional.cosine_similarity(flat(bf16), flat(expected), dim=0) > 0.999
