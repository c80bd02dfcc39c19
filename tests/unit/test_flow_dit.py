"""FlowDiT: parameter counts (DiT's exactly, the seed's by formula), RoPE against a complex-number reference and its
relative-position property, SwiGLU against a direct computation (and xformers against torch on a GPU), DiT's
sin-cos positions against numpy, forward shapes and null labels, adaLN-Zero, FSDP units and config errors."""

import numpy as np
import pytest
import torch
from torch import nn

from diffscale import registry as R
from diffscale.errors import ConfigError
from diffscale.models.flow_dit import Block, FlowDiT, sincos_2d
from diffscale.models.layers.mlp import SwiGLU, swiglu_usable
from diffscale.models.layers.rope import apply_rope, grid_positions, rope_1d, rope_2d

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# DiT's own code (facebookresearch/DiT models.py, 32x32x4 latents, 1000 classes, learn_sigma=True), counted from a
# scratch copy (not in this repo): trainable parameters, i.e. without its frozen pos_embed.
DIT_PARAMS = {"dit_b2": 130_315_808, "dit_xl2": 674_834_720}
# The FlowDiT seed's diff_model (dim 1088, 17 blocks, c_dim 2048, RoPE), counted the same way without its VAE;
# trainable (its rotary frequencies are a frozen parameter).
SEED_PARAMS = 452_050_256


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def formula_params(cfg: dict) -> int:
    """Parameters of a FlowDiT config, layer by layer from the shapes."""
    C, D, p, nc, heads = cfg["img_channels"], cfg["dim"], cfg["patch_size"], cfg["num_classes"], cfg["num_heads"]
    hidden, co = int(D * cfg["hidden_scale"]), C * (2 if cfg["learn_sigma"] else 1)
    patch = C * p * p * D + (D * D + D if cfg["patch_linear"] else D)  # conv, then a Linear or the conv's bias
    if cfg["cond"] == "dit":
        embed = (256 * D + D + D * D + D) + (nc + 1) * D  # time MLP from 256 frequencies; table with a null row
    else:
        c_dim = cfg["c_dim"] or D
        embed = D * D + nc * c_dim + c_dim * D + D  # bias-free time Linear; one-hot -> c_dim -> D
    attn = 4 * D * D + (3 * D if cfg["qkv_bias"] else 0) + (D if cfg["proj_bias"] else 0) \
        + (2 * (D // heads) if cfg["qk_norm"] else 0)
    up = 2 * hidden if cfg["mlp"] == "swiglu" else hidden  # SwiGLU's w12 packs two hidden-wide projections
    mlp = D * up + up + hidden * D + D
    block = attn + mlp + D * 6 * D + 6 * D  # adaLN: shift, scale, gate for attention and MLP
    head = D * 2 * D + 2 * D + D * p * p * co + p * p * co
    return patch + embed + cfg["depth"] * block + head


def inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([0.02, 0.5, 0.97, 0.3][:batch])
    labels = torch.tensor([1, -1, 7, 4][:batch])
    return x, t, labels


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("preset", ["dit_b2", "dit_xl2", "seed_imagenet256"])
def test_preset_counts_are_the_reference_codes(preset):
    with torch.device("meta"):
        model = FlowDiT(preset)
    expected = DIT_PARAMS.get(preset, SEED_PARAMS)
    print(preset, count(model))
    assert count(model) == expected == formula_params(model.config)
    assert count(model) == sum(p.numel() for p in model.parameters())  # nothing frozen: pos_embed is a buffer


@pytest.mark.parametrize("overrides", [{}, dict(cond="dit", mlp="gelu", pos="absolute", qkv_bias=True),
                                       dict(learn_sigma=True, patch_linear=False, qk_norm=False, proj_bias=True),
                                       dict(c_dim=None, pos="rope2d", hidden_scale=2.5)])
def test_tiny_counts_match_the_formula(overrides):
    model = FlowDiT("tiny", **overrides)
    assert count(model) == formula_params(model.config)


def test_dit_presets_use_dit_parameter_names():
    """DiT's names (so its and SiT's state dicts load): the stem, block 0 and the head of DiT's state dict."""
    with torch.device("meta"):
        names = set(FlowDiT("dit_b2").state_dict())
    stem = ["pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight",
            "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
            "y_embedder.embedding_table.weight"]
    block = [f"blocks.0.{n}" for n in ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                                       "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                                       "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")]
    head = [f"final_layer.{n}" for n in ("linear.weight", "linear.bias", "adaLN_modulation.1.weight",
                                         "adaLN_modulation.1.bias")]
    assert {n for n in names if not n.startswith("blocks.") or n.startswith("blocks.0.")} == {*stem, *block, *head}
    assert len(names) == len(stem) + 12 * len(block) + len(head)


# RoPE ----------------------------------------------------------------------------------------------------------------


def complex_rope(x: torch.Tensor, angles: np.ndarray) -> torch.Tensor:
    """Independent reference: channel pairs (2j, 2j + 1) as complex numbers times exp(i angle_j)."""
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    rotated = z * torch.polar(torch.ones_like(z.real), torch.from_numpy(angles))
    return torch.view_as_real(rotated).reshape(x.shape)


def angles_1d(pos: np.ndarray, dim: int, theta: float = 1e4) -> np.ndarray:
    return pos.astype(np.float64)[:, None] * theta ** (-2.0 * np.arange(dim // 2) / dim)[None, :]


def angles_2d(rows: np.ndarray, cols: np.ndarray, dim: int) -> np.ndarray:
    return np.concatenate([angles_1d(rows, dim // 2), angles_1d(cols, dim // 2)], axis=1)  # rows rotate first half


def rotate(x: torch.Tensor, pos: torch.Tensor, kind: str) -> torch.Tensor:
    """x [N, d] rotated at positions pos ([N] for 1-D, [N, 2] (row, col) for 2-D)."""
    d = x.shape[-1]
    return apply_rope(x, *(rope_1d(pos, d) if kind == "1d" else rope_2d(pos[:, 0], pos[:, 1], d)))


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_rope_matches_the_complex_reference(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 16, generator=g)  # [B, heads, N, d]
    if kind == "1d":
        pos = torch.arange(12) * 3 + 5
        cos, sin = rope_1d(pos, 16)
        ref = complex_rope(x, angles_1d(pos.numpy(), 16))
    else:
        rows, cols = grid_positions(3, 4)
        cos, sin = rope_2d(rows, cols, 16)
        ref = complex_rope(x, angles_2d(rows.numpy(), cols.numpy(), 16))
    assert cos.shape == sin.shape == (12, 8) and cos.dtype == torch.float32
    assert max_diff(apply_rope(x, cos, sin), ref) < 1e-5
    assert apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_rope_scores_depend_only_on_relative_positions(kind):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(10, 32, generator=g, dtype=torch.float64), torch.randn(7, 32, generator=g, dtype=torch.float64)
    extra = () if kind == "1d" else (2,)  # (row, col) per token in 2-D
    pq, pk = torch.randint(0, 16, (10, *extra), generator=g), torch.randint(0, 16, (7, *extra), generator=g)
    offset = 9 if kind == "1d" else torch.tensor([5, -3])
    scores = rotate(q, pq, kind) @ rotate(k, pk, kind).T
    shifted = rotate(q, pq + offset, kind) @ rotate(k, pk + offset, kind).T
    one_side = rotate(q, pq + offset, kind) @ rotate(k, pk, kind).T
    assert max_diff(scores, shifted) < 1e-4
    assert max_diff(scores, one_side) > 0.1


# SwiGLU --------------------------------------------------------------------------------------------------------------


def swiglu_reference(m: SwiGLU, x: torch.Tensor) -> torch.Tensor:
    w1, w2 = m.w12.weight.double().chunk(2)
    b1, b2 = m.w12.bias.double().chunk(2)
    x = x.double()
    hidden = torch.nn.functional.silu(x @ w1.T + b1) * (x @ w2.T + b2)
    return hidden @ m.w3.weight.double().T + m.w3.bias.double()


def test_swiglu_is_w3_silu_w1x_times_w2x():
    torch.manual_seed(0)
    m = SwiGLU(24, 40)
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        assert max_diff(m(x), swiglu_reference(m, x)) < 1e-5
    assert m(x).shape == (2, 5, 24) and SwiGLU(24, 40, out_dim=8)(x).shape == (2, 5, 8)
    assert not swiglu_usable(torch.float32)  # the fused kernel is fp16 / bf16 only


@pytest.mark.gpu
def test_swiglu_xformers_matches_torch_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if not swiglu_usable(torch.bfloat16):
        pytest.skip("xformers' fused swiglu does not run here")
    torch.manual_seed(0)
    m = SwiGLU(256, 512).cuda()
    x = torch.randn(4, 64, 256, device="cuda", requires_grad=True)
    ref = swiglu_reference(m, x)
    grads_ref = torch.autograd.grad(ref.sum(), [x, m.w12.weight])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = m(x)  # the xformers path, in bf16
    grads = torch.autograd.grad(fused.float().sum(), [x, m.w12.weight])
    assert fused.dtype == torch.bfloat16
    assert max_diff(fused, ref) < 2e-2 * ref.abs().max().item()
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert max_diff(g, g_ref) < 3e-2 * g_ref.abs().max().item()


# Absolute positions --------------------------------------------------------------------------------------------------


def sincos_reference(dim: int, grid: int) -> np.ndarray:
    """DiT's convention, written out: token r * grid + c; channels [sin(c w) | cos(c w) | sin(r w) | cos(r w)],
    w_k = 10000^(-k / (dim / 4))."""
    w = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    out = np.zeros((grid * grid, dim))
    for r in range(grid):
        for c in range(grid):
            out[r * grid + c] = np.concatenate([np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)])
    return out


def test_absolute_positions_are_dit_sincos_in_a_buffer():
    assert np.abs(sincos_2d(64, 16).numpy() - sincos_reference(64, 16)).max() < 1e-6
    model = FlowDiT("tiny", pos="absolute")
    assert np.abs(model.pos_embed[0].numpy() - sincos_reference(32, 4)).max() < 1e-6
    assert "pos_embed" in model.state_dict() and "pos_embed" not in dict(model.named_parameters())


# Forward -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, dict(pos="rope2d"), dict(pos="absolute", cond="dit", mlp="gelu")])
def test_shapes_null_labels_and_class_dependence(overrides):
    x, t, labels = inputs()
    model = FlowDiT("tiny", **overrides)
    assert (model.img_channels, model.img_resolution, model.label_dim) == (4, 8, 10)
    with torch.no_grad():
        out = model(x, t, labels)
        null = model(x, t, torch.full((3,), -1))
        assert out.shape == null.shape == (3, 4, 8, 8) and torch.isfinite(out).all()
        assert torch.equal(null, model(x, t, None))
        assert not torch.allclose(null, model(x, t, torch.full((3,), 3)))  # adaln_zero=False: labels matter
        assert not torch.allclose(out, model(x, t.flip(0), labels))  # so does t
        assert model(x, torch.tensor(0.5), labels).shape == (3, 4, 8, 8)  # one t for the batch


def test_learn_sigma_returns_the_first_c_channels():
    x, t, labels = inputs()
    model = FlowDiT("tiny", learn_sigma=True)
    assert model.final_layer.linear.out_features == 2 * 2 * 8
    with torch.no_grad():
        assert model(x, t, labels).shape == (3, 4, 8, 8)


@pytest.mark.parametrize("cond", ["dit", "seed"])
def test_adaln_zero_starts_at_zero_output(cond):
    x, t, labels = inputs()
    model = FlowDiT("tiny", adaln_zero=True, cond=cond)
    with torch.no_grad():
        assert torch.equal(model(x, t, labels), torch.zeros(3, 4, 8, 8))


def test_blocks_see_each_example_alone():
    x, t, labels = inputs()
    model = FlowDiT("tiny")
    with torch.no_grad():
        together = model(x, t, labels)
        for j in range(3):
            assert max_diff(together[j:j + 1], model(x[j:j + 1], t[j:j + 1], labels[j:j + 1])) < 1e-5


def test_fsdp_units_are_exactly_the_blocks():
    model = FlowDiT("tiny")
    units = model.fsdp_units()
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(units) == model.depth == len(blocks) and {id(u) for u in units} == {id(b) for b in blocks}


def test_builds_from_the_registry():
    model = R.build(R.MODELS, dict(type="FlowDiT", preset="tiny", pos="rope2d"), "model")
    assert isinstance(model, FlowDiT) and model.pos == "rope2d"


@pytest.mark.parametrize(("kwargs", "arg"), [
    (dict(preset="tiny", dim=0), "dim"),
    (dict(preset="tiny", num_heads=3), "num_heads"),
    (dict(preset="tiny", patch_size=3), "patch_size"),
    (dict(preset="tiny", mlp="relu"), "mlp: unknown choice 'relu'; expected one of swiglu, gelu"),
    (dict(preset="tiny", pos="learned"), "pos: unknown choice 'learned'; expected one of rope, rope2d, absolute"),
    (dict(preset="tiny", cond="film"), "cond: unknown choice 'film'; expected one of dit, seed"),
    (dict(preset="tiny", dim=24, num_heads=4, pos="rope2d"), "pos"),  # head width 6: not 2-D axial
    (dict(preset="tiny", qk_norm="yes"), "qk_norm"),
    (dict(preset="tiny", hidden_scale=0), "hidden_scale"),
    (dict(preset="tiny", c_dim=0), "c_dim"),
    (dict(preset="dit_b2", c_dim=512), "c_dim"),
    (dict(preset="tiny", num_classes=0), "num_classes"),
    (dict(preset="dit_b"), "preset"),
    (dict(img_resolution=32), "img_channels"),
])
def test_config_errors_name_the_argument(kwargs, arg):
    with pytest.raises(ConfigError, match=f"^FlowDiT: {arg}"):
        FlowDiT(**kwargs)


def test_wrong_input_shape_is_a_clear_error():
    model = FlowDiT("tiny")
    with pytest.raises(ValueError, match="x must be"):
        model(torch.zeros(1, 4, 16, 16), torch.zeros(1))
