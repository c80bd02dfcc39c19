"""U-ViT and DeeDiff U-ViT: parameter counts (exact, and by formula from the layer shapes), shapes, null labels,
DeeDiff's final output against plain U-ViT, exits against the per-layer API, per-example timestep probes, FSDP
units, freeze patterns, batch independence, FLOPs against an analytic count, and config errors."""

import fnmatch

import pytest
import torch
from torch import nn

from diffscale import registry as R
from diffscale.errors import ConfigError
from diffscale.evaluation.flops import flop_analysis, forward_flops
from diffscale.models.deediff import HEAD_PATTERNS, PROBE_TYPES, DeeDiffUViT
from diffscale.models.uvit import Block, UViT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# U-ViT's own code (baofff/U-ViT libs/uvit.py, img 32, patch 2, embed 512, depth 12 -> 13 layers, 8 heads,
# unconditional) and the DeeDiff seed's EarlyExitUViT on it (per probe type), counted from scratch copies (not in
# this repo); ours match them exactly.
S2_PARAMS = 44_255_328
SEED_DEEDIFF_PARAMS = {"attention_probe": 54_606_669, "mlp_probe_per_layer": 44_356_429,
                       "mlp_probe_per_timestep": 44_862_760, "mlp_probe_per_layer_per_timestep": 51_018_760}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def formula_params(cfg: dict) -> int:
    """Parameters of a UViT config, layer by layer from the shapes."""
    C, D, p, depth, nc = cfg["img_channels"], cfg["embed_dim"], cfg["patch_size"], cfg["depth"], cfg["num_classes"]
    hidden, co = int(D * cfg["mlp_ratio"]), C * (2 if cfg["learn_sigma"] else 1)
    tokens = (1 if nc == 0 else 2) + (cfg["img_resolution"] // p) ** 2
    stem = C * D * p * p + D + tokens * D  # patch conv, position embedding
    stem += (D * 4 * D + 4 * D + 4 * D * D + D) if cfg["mlp_time_embed"] else 0
    stem += (nc + 1) * D if nc else 0  # class table with the null row
    block = 2 * D + 3 * D * D + (3 * D if cfg["qkv_bias"] else 0) + D * D + D + 2 * D + D * hidden + hidden \
        + hidden * D + D
    skips = (depth // 2) * (2 * D * D + D)
    head = 2 * D + D * p * p * co + p * p * co + (co * co * 9 + co if cfg["conv"] else 0)
    return stem + depth * block + skips + head


def formula_deediff_extra(model: DeeDiffUViT) -> int:
    """Parameters DeeDiff adds: an exit head per layer and the probes."""
    cfg, D, depth, T = model.config, model.embed_dim, model.depth, model.num_timesteps
    co, p = model.out_channels, cfg["patch_size"]
    heads = depth * (2 * D + D * p * p * co + p * p * co + co * co * 9 + co)
    per_probe = {"attention_probe": D + 2 * D * D + 2 * D + D * D + D + D + 1}.get(model.classifier_type, D + 1)
    n = {"attention_probe": depth, "mlp_probe_per_layer": depth, "mlp_probe_per_timestep": T,
         "mlp_probe_per_layer_per_timestep": depth * T}[model.classifier_type]
    return heads + n * per_probe


def assert_near(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    """Max-abs check (the first call of torch's assert_close costs about a second of imports)."""
    assert a.shape == b.shape and (a - b).abs().max().item() <= atol


def inputs(batch: int = 3, seed: int = 0, res: int = 8, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, res, res, generator=g)
    t = torch.tensor([3.0, 500.0, 999.0, 120.0][:batch])
    labels = torch.tensor([1, -1, 7, 4][:batch])
    return x, t, labels


def test_s2_cifar10_has_exactly_the_published_count():
    with torch.device("meta"):
        model = UViT("uvit_s2_cifar10")
        assert count(model) == S2_PARAMS == formula_params(model.config)
        for kind, expected in SEED_DEEDIFF_PARAMS.items():
            assert count(DeeDiffUViT("uvit_s2_cifar10", classifier_type=kind)) == expected, kind


@pytest.mark.parametrize("overrides", [{}, dict(learn_sigma=True, qkv_bias=True), dict(num_classes=0, conv=False,
                                                                                        mlp_time_embed=False)])
def test_counts_match_the_formula(overrides):
    # On the CPU: tiny, and nn.Embedding's normal_ on the meta device imports torch._dynamo (seconds).
    model = UViT("tiny", **overrides)
    assert count(model) == formula_params(model.config)
    for kind in PROBE_TYPES:
        if overrides.get("conv") is False:
            continue  # formula_deediff_extra assumes conv exits
        deediff = DeeDiffUViT("tiny", classifier_type=kind, num_timesteps=7, **overrides)
        assert count(deediff) == formula_params(deediff.config) + formula_deediff_extra(deediff), kind


def test_shapes_and_attributes():
    x, t, labels = inputs()
    model = UViT("tiny")
    assert (model.img_channels, model.img_resolution, model.label_dim, model.learn_sigma, model.depth) == \
        (3, 8, 10, False, 5)
    assert model(x, t, labels).shape == (3, 3, 8, 8)
    assert model.embed(x, t, labels).shape == (3, 2 + 16, 32)
    assert UViT("tiny", learn_sigma=True)(x, t, labels).shape == (3, 6, 8, 8)
    assert model(x, torch.tensor(5.0), labels).shape == (3, 3, 8, 8)  # one timestep for the batch
    final, exits, unc = DeeDiffUViT("tiny", learn_sigma=True).forward_exits(x, t, labels)
    assert final.shape == (3, 6, 8, 8) and exits.shape == (5, 3, 6, 8, 8) and unc.shape == (5, 3)


def test_null_label_is_minus_one_or_none_and_differs_from_a_class():
    x, t, _ = inputs()
    model = UViT("tiny")
    null = model(x, t, torch.full((3,), -1))
    assert torch.equal(null, model(x, t, None))
    assert not torch.allclose(null, model(x, t, torch.full((3,), 3)))
    uncond = UViT("tiny", num_classes=0)
    assert uncond.label_emb is None and torch.equal(uncond(x, t, torch.tensor([1, 2, 3])), uncond(x, t))


def test_normalize_timesteps_embeds_t_over_1000():
    x, t, labels = inputs()
    plain, normalized = UViT("tiny"), UViT("tiny", normalize_timesteps=True)
    normalized.load_state_dict(plain.state_dict())
    assert torch.equal(normalized(x, t, labels), plain(x, t / 1000.0, labels))


def test_deediff_forward_equals_uvit_with_the_same_weights():
    torch.manual_seed(1)
    x, t, labels = inputs()
    uvit = UViT("tiny")
    for kind in PROBE_TYPES:
        deediff = DeeDiffUViT("tiny", classifier_type=kind)
        result = deediff.load_state_dict(uvit.state_dict(), strict=False)
        assert not result.unexpected_keys and sorted(result.missing_keys) == sorted(deediff.head_parameter_names())
        with torch.no_grad():
            expected = uvit(x, t, labels)
            assert torch.equal(deediff(x, t, labels), expected)
            assert torch.equal(deediff.forward_exits(x, t, labels)[0], expected)


@pytest.mark.parametrize("kind", PROBE_TYPES)
def test_exit_i_is_layers_before_i_then_head_i(kind):
    x, t, labels = inputs()
    model = DeeDiffUViT("tiny", classifier_type=kind)
    with torch.no_grad():
        final, exits, unc = model.forward_exits(x, t, labels)
        tokens, skips = model.embed(x, t, labels), []
        for i in range(model.depth):
            assert torch.equal(exits[i], model.exit_output(i, tokens)), i
            assert torch.equal(unc[i], model.uncertainty(i, tokens, t)), i
            tokens = model.run_layer(i, tokens, skips)
        assert not skips and torch.equal(final, model.head(tokens))
    assert ((unc >= 0) & (unc <= 1)).all() and unc.shape == (model.depth, 3)


@pytest.mark.parametrize("kind", ["mlp_probe_per_timestep", "mlp_probe_per_layer_per_timestep"])
def test_per_timestep_probe_is_chosen_per_example(kind):
    x, _, labels = inputs(batch=2)
    t = torch.tensor([3.0, 700.0])
    model = DeeDiffUViT("tiny", classifier_type=kind)
    with torch.no_grad():
        together = model.forward_exits(x, t, labels)[2]
        alone = [model.forward_exits(x[j:j + 1], t[j:j + 1], labels[j:j + 1])[2][:, 0] for j in range(2)]
        assert_near(together, torch.stack(alone, dim=1), atol=1e-6)
        # The seed's choice (the first example's probe for the whole batch) would give example 1 another value.
        tokens = model.embed(x, t, labels)
        assert not torch.allclose(model.uncertainty(0, tokens, t[:1])[1], together[0, 1])
    rescaled = DeeDiffUViT("tiny", classifier_type=kind, num_timesteps=10)
    assert rescaled.timestep_index(torch.tensor([0.0, 299.9, 700.0, 999.0])).tolist() == [0, 3, 7, 9]


def test_uvit_fsdp_units_are_exactly_the_blocks():
    model = UViT("tiny")
    units = model.fsdp_units()
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(units) == model.depth == len(blocks) and {id(u) for u in units} == {id(b) for b in blocks}


@pytest.mark.parametrize("kind", PROBE_TYPES)
def test_deediff_fsdp_units_are_disjoint_and_cover_blocks_heads_probes(kind):
    model = DeeDiffUViT("tiny", classifier_type=kind)
    owned = [{id(p) for p in unit.parameters()} for unit in model.fsdp_units()]
    assert sum(map(len, owned)) == len(set().union(*owned))  # disjoint
    expected = {id(p) for m in (*model.blocks(), model.exit_heads, model.probes) for p in m.parameters()}
    assert set().union(*owned) == expected


@pytest.mark.parametrize("kind", PROBE_TYPES)
def test_freeze_patterns_select_exactly_the_heads_and_probes(kind):
    model = DeeDiffUViT("tiny", classifier_type=kind)
    matched = {n for n, _ in model.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in HEAD_PATTERNS)}
    heads = {f"exit_heads.{n}" for n, _ in model.exit_heads.named_parameters()}
    probes = {f"probes.{n}" for n, _ in model.probes.named_parameters()}
    assert matched == heads | probes == set(model.head_parameter_names())
    backbone = {n for n, _ in model.named_parameters()} - matched
    assert backbone == {n for n, _ in UViT("tiny").named_parameters()}


def test_batch_independence():
    x, t, labels = inputs(batch=3)
    model = DeeDiffUViT("tiny", classifier_type="attention_probe")
    with torch.no_grad():
        final, exits, unc = model.forward_exits(x, t, labels)  # [B, ...], [depth, B, ...], [depth, B]
        for j in range(3):
            final_j, exits_j, unc_j = model.forward_exits(x[j:j + 1], t[j:j + 1], labels[j:j + 1])
            assert_near(final[j:j + 1], final_j, atol=1e-5)
            assert_near(exits[:, j:j + 1], exits_j, atol=1e-5)
            assert_near(unc[:, j:j + 1], unc_j, atol=1e-6)


def analytic_macs(cfg: dict, batch: int) -> dict[str, int]:
    """fvcore's multiply-adds of a UViT forward by operator: every Linear runs on all L tokens (the head drops the
    extra tokens after its Linear), attention is q k^T and attn v (L * L * D each), LayerNorm 5 per element
    (fvcore's rule), convs C_in * k * k per output element; elementwise ops are zero."""
    C, D, p, depth, img = cfg["img_channels"], cfg["embed_dim"], cfg["patch_size"], cfg["depth"], cfg["img_resolution"]
    hidden, co = int(D * cfg["mlp_ratio"]), C * (2 if cfg["learn_sigma"] else 1)
    n = (img // p) ** 2
    L = (2 if cfg["num_classes"] else 1) + n
    linear = depth * L * (3 * D * D + D * D + 2 * D * hidden) + (depth // 2) * L * 2 * D * D + L * D * p * p * co
    linear += 8 * D * D if cfg["mlp_time_embed"] else 0
    conv = n * D * C * p * p + (img * img * co * co * 9 if cfg["conv"] else 0)
    macs = dict(linear=linear, conv=conv, scaled_dot_product_attention=depth * L * L * 2 * D,
                layer_norm=(2 * depth + 1) * 5 * L * D)
    return {k: batch * v for k, v in macs.items()}


def test_tiny_flops_match_the_analytic_count():
    x, t, labels = inputs(batch=2)
    model = UViT("tiny")
    expected = analytic_macs(model.config, batch=2)
    with torch.no_grad():
        assert dict(flop_analysis(model, (x, t, labels)).by_operator()) == expected
    assert forward_flops(model, (x, t, labels)) == 2 * sum(expected.values())  # flops.py: FLOPs = 2 x MACs


def test_s2_cifar10_multiply_adds_are_the_published_11_34_g():
    """DESIGN's 11.34 G multiply-adds per pass are fvcore's count without attention (fvcore has no SDPA rule, so
    the anchor's code counts it as zero); flops.py adds the attention matmuls (0.879 G MACs)."""
    torch.manual_seed(0)
    model = UViT("uvit_s2_cifar10")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500.0])
    with torch.no_grad():
        by_op = flop_analysis(model, (x, t)).by_operator()
    assert dict(by_op) == analytic_macs(model.config, batch=1)
    without_attention = sum(by_op.values()) - by_op["scaled_dot_product_attention"]
    assert without_attention / 1e9 == pytest.approx(11.34, abs=0.01)


def test_builds_from_the_registry():
    assert isinstance(R.build(R.MODELS, dict(type="UViT", preset="tiny"), "model"), UViT)
    model = R.build(R.MODELS, dict(type="DeeDiffUViT", preset="tiny", classifier_type="mlp_probe_per_layer"), "model")
    assert isinstance(model, DeeDiffUViT) and model.classifier_type == "mlp_probe_per_layer"


@pytest.mark.parametrize(("cls", "kwargs", "arg"), [
    (UViT, dict(preset="tiny", patch_size=3), "patch_size"),
    (UViT, dict(preset="tiny", num_heads=3), "num_heads"),
    (UViT, dict(preset="tiny", depth=4), "depth"),
    (UViT, dict(preset="tiny", num_classes=-1), "num_classes"),
    (UViT, dict(preset="uvit_s2"), "preset"),
    (UViT, dict(img_resolution=32), "img_channels"),
    (DeeDiffUViT, dict(preset="tiny", classifier_type="attention"), "classifier_type"),
    (DeeDiffUViT, dict(preset="tiny", num_timesteps=0), "num_timesteps"),
    (DeeDiffUViT, dict(preset="tiny", embed_dimm=16), "embed_dimm"),
])
def test_config_errors_name_the_argument(cls, kwargs, arg):
    with pytest.raises(ConfigError, match=arg):
        cls(**kwargs)
