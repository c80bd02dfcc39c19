"""SongUNet (EDM's DDPM++ / NCSN++): published parameter counts and a per-module count formula, the official
state-dict layout (hashes of NVlabs/edm's key lists), outputs against values the official code computed for fixed
weights, EDM's init, label handling, FSDP units and the EDMPrecond convention."""

import hashlib
import math

import pytest
import torch
from torch import nn

from diffscale.diffusion.edm import EDMLoss, EDMPrecond
from diffscale.errors import ConfigError
from diffscale.models.song_unet import SongBlock, SongUNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Class-conditional CIFAR-10 (EDM's edm-cifar10-32x32-cond-vp / -ve configs) with EDMPrecond, counted with
# NVlabs/edm's code (published figures: augment_dim 0). augment_dim 9 adds map_augment [noise_channels, 9]:
# 55,735,299 and 56,400,643, as the official code counts them too.
PUBLISHED = {"ddpmpp": 55_734_147, "ncsnpp": 56_398_339}
WITH_AUGMENT = {"ddpmpp": 55_735_299, "ncsnpp": 56_400_643}
TINY = dict(img_resolution=16, label_dim=10, augment_dim=9, model_channels=16, channel_mult=(1, 2), num_blocks=1,
            attn_resolutions=(8,))
SKIP = dict(preset="ncsnpp", encoder_type="skip", decoder_type="skip")  # the remaining encoder/decoder variants
# Entries and sha256 (first 16 hex digits) of the "key [shape]" lines, in state-dict order, of NVlabs/edm's SongUNet
# at TINY, as its code builds them.
OFFICIAL_KEYS = {"ddpmpp": (149, "cd2fd3dea6e72f95"), "ncsnpp": (153, "c2a6adef980dc55c"),
                 "skip": (158, "1cb9d37626917897")}
# Official outputs F.flatten()[::191] and mean |F| at TINY with the weights of `golden_weights_`.
GOLDEN = {"ddpmpp": ([0.03698, -0.3937, 0.4538, -0.87912, -0.30038, -0.76999, 0.30012, -0.60295, -0.46451], 0.550371),
          "ncsnpp": ([0.10803, 0.01541, 0.97976, -0.20513, -0.55978, -0.36849, 0.98529, -0.10165, -0.76679], 0.45812),
          "skip": ([-0.48592, -0.52347, 0.33144, -0.20428, 0.08775, -0.91568, 0.46184, 0.05974, 0.58692], 0.388899)}


def tiny(name: str, **kw) -> SongUNet:
    return SongUNet(**(SKIP if name == "skip" else dict(preset=name)), **{**TINY, **kw})


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cifar10(preset: str, augment_dim: int = 0) -> EDMPrecond:
    with torch.device("meta"):  # shapes only
        return EDMPrecond(SongUNet(preset, label_dim=10, augment_dim=augment_dim), label_dim=10, logvar_channels=0)


@pytest.mark.parametrize("preset", ["ddpmpp", "ncsnpp"])
def test_parameter_counts_match_published(preset):
    assert count(cifar10(preset)) == PUBLISHED[preset]
    assert count(cifar10(preset, augment_dim=9)) == WITH_AUGMENT[preset]


def block_formula(b: SongBlock, emb: int) -> int:
    """Parameters of a residual block from its widths: 2 GroupNorms, two 3x3 convs, the embedding's linear map,
    the 1x1 skip where the shape changes, and GroupNorm + qkv + proj with attention."""
    i, o = b.in_channels, b.out_channels
    n = 2 * i + (9 * i * o + o) + (emb * o + o) + 2 * o + (9 * o * o + o)
    n += (i * o + o) if b.skip is not None else 0
    return n + ((2 * o + 3 * o * o + 3 * o + o * o + o) if b.attention else 0)


def test_parameter_count_formula_per_module():
    net = cifar10("ddpmpp").net
    c, e, noise = 128, 512, 128  # model channels, embedding and noise-embedding widths of DDPM++
    mapping = (10 * noise + noise) + (noise * e + e) + (e * e + e)  # label, layer0, layer1
    assert count(net.map_label) + count(net.map_layer0) + count(net.map_layer1) == mapping
    blocks = net.fsdp_units()
    assert len(blocks) == (4 * 3 + 2) + (2 + 5 * 3 + 2)  # enc: 4 per level + 2 down; dec: in0, in1, 5 per level, 2 up
    assert all(count(b) == block_formula(b, e) for b in blocks)
    conv_in, out = 3 * c * 9 + c, (2 * 2 * c) + (2 * c * 3 * 9 + 3)  # input conv; output GroupNorm + conv
    assert count(net) == mapping + conv_in + sum(block_formula(b, e) for b in blocks) + out == PUBLISHED["ddpmpp"]


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp", "skip"])
def test_state_dict_keys_are_the_official_ones(name):
    sd = tiny(name).state_dict()
    lines = "\n".join(f"{k} {list(v.shape)}" for k, v in sd.items())
    n, digest = OFFICIAL_KEYS[name]
    assert len(sd) == n
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == digest
    for key in ("map_layer0.weight", "enc.16x16_conv.weight", "enc.8x8_down.conv0.resample_filter",
                "enc.8x8_block0.qkv.weight", "dec.8x8_in0.proj.bias", "dec.16x16_block1.skip.weight",
                "dec.16x16_aux_norm.weight", "dec.16x16_aux_conv.weight", "map_augment.weight"):
        assert key in sd, key
    assert ("map_noise.freqs" in sd) == (name != "ddpmpp")  # NCSN++'s Fourier frequencies are a buffer
    assert ("enc.8x8_aux_residual.weight" in sd) == (name == "ncsnpp")
    assert ("dec.8x8_aux_conv.weight" in sd) == (name == "skip")


def golden_weights_(net: nn.Module) -> torch.Tensor:
    """Fill every tensor in state-dict order from one generator (as the official values were made); returns the
    generator for the inputs."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if "resample_filter" not in k:
                v.copy_(torch.randn(v.shape, generator=g) * (0.2 if "freqs" not in k else 1.0)
                        + (1.0 if ".norm" in k and k.endswith("weight") else 0.0))
    return g


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp", "skip"])
def test_outputs_match_the_official_network(name):
    net = tiny(name).eval()
    g = golden_weights_(net)
    x, noise = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([-1.0, 0.5])
    labels, aug = nn.functional.one_hot(torch.tensor([1, 7]), 10).float(), torch.randn(2, 9, generator=g)
    with torch.no_grad():
        F = net(x, noise, labels, aug)
    values, mean_abs = GOLDEN[name]
    assert F.shape == x.shape
    assert F.flatten()[::191].tolist() == pytest.approx(values, abs=2e-5)
    assert F.abs().mean().item() == pytest.approx(mean_abs, abs=2e-6)


def test_init_is_edms():
    """Xavier-uniform weights (1e-5 of it for the last conv of each branch and the output, sqrt(0.2) for qkv),
    zero biases, unit GroupNorm scales."""
    torch.manual_seed(0)
    net = tiny("ddpmpp")
    block = net.enc["8x8_block0"]

    def bound(w):  # Xavier-uniform limit: sqrt(6 / (fan_in + fan_out))
        return math.sqrt(6 / (w[0].numel() + w[:, 0].numel()))

    for w, scale in ((block.conv0.weight, 1), (block.affine.weight, 1), (block.conv1.weight, 1e-5),
                     (block.qkv.weight, math.sqrt(0.2)), (block.proj.weight, 1e-5),
                     (net.dec["16x16_aux_conv"].weight, 1e-5)):
        limit = scale * bound(w)
        assert w.abs().max() <= limit and w.abs().max() > 0.9 * limit
        assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.15)
    assert all(p.abs().sum() == 0 for k, p in net.named_parameters() if k.endswith("bias"))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in net.modules() if isinstance(m, nn.GroupNorm))


def test_labels_determinism_and_label_dropout():
    torch.manual_seed(0)
    net = tiny("ddpmpp", dropout=0.0)
    golden_weights_(net)
    x, noise = torch.randn(3, 3, 16, 16), torch.randn(3)
    one_hot = nn.functional.one_hot(torch.tensor([0, 4, 9]), 10).float()
    with torch.no_grad():
        cond, uncond = net.eval()(x, noise, one_hot), net(x, noise, None)
        assert torch.equal(cond, net(x, noise, one_hot))  # deterministic
        assert torch.equal(uncond, net(x, noise, torch.zeros(3, 10)))  # None is the zero label
        assert (cond - uncond).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # the label matters for every example
        assert not torch.allclose(net(x, noise, one_hot, torch.ones(3, 9)), cond)  # so do augmentation labels
        net.label_dropout = 1.0  # training drops every label: the unconditional output
        assert torch.allclose(net.train()(x, noise, one_hot), uncond, atol=1e-6)
        net.label_dropout = 0.0
        assert torch.allclose(net.train()(x, noise, one_hot), cond, atol=1e-6)  # dropout 0: train = eval


def test_fsdp_units_are_every_residual_block():
    net = tiny("ncsnpp")
    units, blocks = net.fsdp_units(), [m for m in net.modules() if isinstance(m, SongBlock)]
    assert len(units) == len({id(u) for u in units}) == 10 and {id(u) for u in units} == {id(b) for b in blocks}
    in_units = {id(p) for u in units for p in u.parameters()}
    rest = {k.rsplit(".", 1)[0] for k, p in net.named_parameters() if id(p) not in in_units}
    assert rest == {"map_label", "map_augment", "map_layer0", "map_layer1", "enc.16x16_conv",
                    "enc.8x8_aux_residual", "dec.16x16_aux_norm", "dec.16x16_aux_conv"}


def test_fsdp_shards_the_body_inside_its_preconditioners():
    """FSDP2 shards the SongUNet blocks of every wrapper a run builds around it (the EDM teacher and DMD2's
    generator, the consistency student, DMD2's fake score with its head at the root), not only the bare net."""
    from diffscale.diffusion.consistency import ConsistencyPrecond
    from diffscale.diffusion.dmd2 import FakeScoreWithHead
    from diffscale.engine.strategies.fsdp import shard_units

    net = dict(type="SongUNet", preset="ddpmpp", img_resolution=16, label_dim=10, model_channels=16,
               channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,))
    for model in (EDMPrecond(net, label_dim=10, logvar_channels=0), ConsistencyPrecond(net, label_dim=10),
                  FakeScoreWithHead(dict(net=net, label_dim=10))):
        units = shard_units(model)
        assert [id(u) for u in units] == [id(u) for u in model.net.fsdp_units()] and len(units) > 4


def test_fsdp2_sharded_forward_and_backward(single_rank_group):
    """Sharded block by block (strategies/fsdp.py), the network computes the same outputs and gradients."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from diffscale.engine.strategies.fsdp import shard_units

    torch.manual_seed(0)
    plain = tiny("ddpmpp", dropout=0.0, img_resolution=8, attn_resolutions=(4,))
    golden_weights_(plain)
    sharded, mesh = copy.deepcopy(plain), init_device_mesh("cpu", (1,))
    for unit in shard_units(sharded):
        fully_shard(unit, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    x, noise, labels = torch.randn(2, 3, 8, 8), torch.randn(2), nn.functional.one_hot(torch.tensor([2, 5]), 10).float()
    outs = [m(x, noise, labels) for m in (plain, sharded)]
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for out in outs:
        out.square().mean().backward()
    for (k, p), q in zip(plain.named_parameters(), sharded.parameters(), strict=True):
        if k == "map_augment.weight":  # no augmentation labels given: no gradient
            assert p.grad is None and q.grad is None
        else:
            assert torch.allclose(p.grad, q.grad.full_tensor(), atol=1e-6, rtol=1e-5), k


def test_edm_precond_convention():
    """EDMPrecond feeds the net c_in x, c_noise = ln(sigma) / 4 and one-hot labels; D = c_skip x + c_out F."""
    torch.manual_seed(0)
    model = EDMPrecond(tiny("ddpmpp"), label_dim=10, logvar_channels=0).eval()
    assert not any("logvar" in k for k in model.state_dict())
    seen = {}
    model.net.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.01, 1.0, 50.0])
    with torch.no_grad():
        D = model(x, sigma, torch.tensor([0, 4, 9]))
    c_in, c_skip, c_out = 1 / (sigma**2 + 0.25).sqrt(), 0.25 / (sigma**2 + 0.25), sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    net_x, net_noise, net_labels = seen["args"]
    assert torch.allclose(net_x, c_in[:, None, None, None] * x) and torch.allclose(net_noise, sigma.log() / 4)
    assert torch.equal(net_labels, nn.functional.one_hot(torch.tensor([0, 4, 9]), 10).float())
    assert D.shape == x.shape
    assert torch.allclose(D, c_skip[:, None, None, None] * x + c_out[:, None, None, None] * seen["out"])
    with pytest.raises(ConfigError, match="logvar_channels=0"):
        model(x, sigma, None, return_logvar=True)
    loss = EDMLoss(learned_logvar=False)  # plain EDM trains a head-less model
    batch = {"x": x, "label": torch.tensor([0, 4, 9])}
    assert loss.per_example(model, batch, loss.sample_condition(x, torch.Generator().manual_seed(0))).shape == (3,)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown preset 'ddpm'"):
        SongUNet("ddpm")
    with pytest.raises(ConfigError, match="encoder_type: expected one of standard, skip, residual"):
        SongUNet("ddpmpp", encoder_type="progressive")
    with pytest.raises(ConfigError, match="does not halve"):
        SongUNet("ddpmpp", img_resolution=30)
