"""The block U-Net of the DDPM seed codebase (G. Mongaras, "Diffusion models from scratch"), written anew for
diffscale from its description and published settings. Pure nn.Module: the DDPM objective owns the schedule and
the loss.

Layout (a level l = 1..num_levels has width emb_ch * 2^(ch_mult * l); level 0 is emb_ch):
  7x7 conv (C -> emb_ch)
  down, per level l: a stage (width l-1 -> l), its output kept as the skip, then a stride-2 3x3 conv; so
    num_levels = 3 means three halvings (64 -> 8 for ImageNet-64), as in the seed
  middle: stage, efficient channel attention, stage (at the bottom width)
  up, per level l = num_levels..1: a 4x4 stride-2 transposed conv, concat with level l's skip, a stage (2 * width l
    -> width l-1)
  two more stages at full resolution (emb_ch -> emb_ch -> out_channels), a 7x7 conv, then one small ConvNeXt head
  per output half (the seed's diff_model keeps these heads outside its U-Net).
A stage is `blk_types` in order ("res", "conv", "clsAtn", "atn", "chnAtn"); its first res/conv block changes the
width. The time embedding is sinusoidal followed by an MLP (Linear, GELU, Linear); the class embedding is a table
of num_classes + 1 rows whose row 0 is the null class. Every block is one FSDP unit (`fsdp_units`).

Init follows the seed: PyTorch's default everywhere (the output conv is not zero-initialised), class vectors on the
scale of the seed's Linear(num_classes, c_dim) applied to one-hot labels. Where we deliberately differ from the seed
(its bugs fixed, dtype handling), the comment at that line says so.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from diffscale.errors import ConfigError, closest
from diffscale.models.layers.attention import attention
from diffscale.models.presets import check_positive_ints, merge_preset
from diffscale.registry import MODELS

BLOCK_TYPES = ("res", "conv", "clsAtn", "atn", "chnAtn")

# Architecture defaults (the seed's training defaults); a preset or an explicit argument replaces any of them.
DEFAULTS = dict(
    img_resolution=64,  # input height = width (pixels)
    img_channels=None,  # input channels C: required without a preset
    num_classes=0,  # class ids 0..num_classes-1; 0 = unconditional
    emb_ch=128,  # width after the input conv; level l has emb_ch * 2^(ch_mult * l)
    ch_mult=1,  # exponent step of the width per level
    num_levels=3,  # down (and up) levels, one halving each
    blk_types=("res", "res"),  # the blocks of every stage, in order
    t_dim=512,  # sinusoidal timestep embedding width (and its MLP's)
    c_dim=512,  # class embedding width; -1 = unconditional
    atn_resolution=16,  # "atn" attends within atn_resolution x atn_resolution windows (whole map if smaller)
    learn_sigma=True,  # output 2C channels: [eps, variance interpolation v] (improved DDPM); else C
    dropout=0.0,  # dropout inside res and conv blocks (the seed never trained with dropout)
    num_heads=1,  # heads of "atn"; the seed uses one head spanning all channels of a window
)
_IMAGENET64 = dict(img_resolution=64, img_channels=3, num_classes=1000, emb_ch=128, ch_mult=1, num_levels=3,
                   t_dim=512, c_dim=512, atn_resolution=16, learn_sigma=True)
PRESETS: dict[str, dict] = {
    # The seed's two best published ImageNet-64 models; its README names them "Res-Res-Atn" and "Res-Res" and
    # lists their stages as res-res-clsAtn-atn-chnAtn and res-res-clsAtn-chnAtn.
    "imagenet64_res_res_atn": dict(_IMAGENET64, blk_types=("res", "res", "clsAtn", "atn", "chnAtn")),
    "imagenet64_res_res": dict(_IMAGENET64, blk_types=("res", "res", "clsAtn", "chnAtn")),
    # CIFAR-10 after improved DDPM (Nichol & Dhariwal 2021): 32x32, unconditional, learned variance, dropout 0.3
    # (their CIFAR-10 setting), bottom at 4x4 as theirs (3 halvings). emb_ch 64 gives widths 128/256/512 and about
    # the parameters of their 128-channel CIFAR-10 network (52M); emb_ch 128 would be the ImageNet model's 4x.
    "cifar10_improved": dict(img_resolution=32, img_channels=3, num_classes=0, c_dim=-1, emb_ch=64, ch_mult=1,
                             num_levels=3, t_dim=512, atn_resolution=16, learn_sigma=True, dropout=0.3,
                             blk_types=("res", "res", "atn")),
    # CPU tests: every block type, windows smaller than the maps (4x4 windows on 16x16 and 8x8; whole 4x4 map).
    "tiny": dict(img_resolution=16, img_channels=3, num_classes=10, emb_ch=16, ch_mult=1, num_levels=2, t_dim=32,
                 c_dim=32, atn_resolution=4, learn_sigma=True, blk_types=("res", "conv", "clsAtn", "atn", "chnAtn")),
}


def _err(arg: str, message: str) -> ConfigError:
    return ConfigError(f"DDPMUNet: {arg}: {message}")


def parse_blk_types(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'res,res,atn' or a sequence -> ('res', 'res', 'atn'); ConfigError on an unknown or missing block type."""
    types = tuple(s.strip() for s in value.split(",")) if isinstance(value, str) else tuple(value)
    for name in types:
        if name not in BLOCK_TYPES:
            raise _err("blk_types", f"'{name}' is not a block type; expected one of {', '.join(BLOCK_TYPES)} "
                                    f"(closest: {closest(name, BLOCK_TYPES)})")
    if not {"res", "conv"} & set(types):
        raise _err("blk_types", f"{types} has no 'res' or 'conv' block; one is needed to change a stage's width")
    return types


def resolve_config(preset: str | None, overrides: dict) -> dict:
    """DEFAULTS, then the preset, then every override that is not None (an explicit argument wins); validated."""
    cfg = merge_preset("DDPMUNet", DEFAULTS, PRESETS, preset, overrides)
    cfg["blk_types"] = parse_blk_types(cfg["blk_types"])
    check_positive_ints("DDPMUNet", cfg, ("img_channels", "img_resolution", "emb_ch", "num_levels", "t_dim",
                                          "atn_resolution", "num_heads"))
    if not isinstance(cfg["ch_mult"], int) or cfg["ch_mult"] < 0:
        raise _err("ch_mult", f"expected an integer >= 0, got {cfg['ch_mult']!r}")
    if not isinstance(cfg["num_classes"], int) or cfg["num_classes"] < 0:
        raise _err("num_classes", f"expected an integer >= 0, got {cfg['num_classes']!r}")
    if cfg["c_dim"] != -1 and (not isinstance(cfg["c_dim"], int) or cfg["c_dim"] < 1):
        raise _err("c_dim", f"expected a positive integer or -1 (unconditional), got {cfg['c_dim']!r}")
    if cfg["t_dim"] % 2:
        raise _err("t_dim", f"expected an even width (sin and cos pairs), got {cfg['t_dim']}")
    if not 0.0 <= cfg["dropout"] < 1.0:
        raise _err("dropout", f"expected a probability in [0, 1), got {cfg['dropout']}")
    res, levels = cfg["img_resolution"], cfg["num_levels"]
    if res % 2**levels:
        raise _err("img_resolution", f"{res} does not halve num_levels={levels} times (expected a multiple of "
                                     f"{2**levels})")
    if "clsAtn" in cfg["blk_types"] and not (cfg["num_classes"] and cfg["c_dim"] != -1):
        raise _err("blk_types", "'clsAtn' needs class features; expected num_classes > 0 and c_dim != -1")
    if "atn" in cfg["blk_types"]:
        window = cfg["atn_resolution"]
        for size in (res >> level for level in range(levels + 1)):
            if size >= window and size % window:
                raise _err("atn_resolution", f"{window} does not tile the {size}x{size} feature maps (expected a "
                                             f"divisor of every map size at least as large)")
        for width in _widths(cfg) + [_out_channels(cfg)]:
            if width % cfg["num_heads"]:
                raise _err("num_heads", f"{cfg['num_heads']} heads do not split {width} channels")
    return cfg


def _widths(cfg: dict) -> list[int]:
    """Width of level 0 (after the input conv) .. num_levels."""
    return [cfg["emb_ch"] * 2 ** (cfg["ch_mult"] * level) for level in range(cfg["num_levels"] + 1)]


def _out_channels(cfg: dict) -> int:
    return cfg["img_channels"] * (2 if cfg["learn_sigma"] else 1)


def _groups_of_four(channels: int) -> int:
    """The seed's GroupNorm for conv and attention blocks: groups of 4 channels (1 group up to 4 channels). Where
    channels // 4 does not divide the channels the seed fails; we fall back to one group."""
    groups = channels // 4 if channels > 4 else 1
    return groups if channels % groups == 0 else 1


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size (Wang et al. 2020, eq. 12): |log2(C) / gamma + b / gamma|, made odd."""
    k = int(abs(math.log2(channels) / gamma + b / gamma))
    return k if k % 2 else k + 1


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] timesteps (any real scale, e.g. 0..999) -> [B, dim] float32: sin at even and cos at odd positions of
    t / 10000^(2j / dim) (Vaswani et al. 2017). The seed multiplies by 10000^(2j / dim) over j < dim instead of
    dividing over j < dim / 2, which gives frequencies up to 1e8; we use the standard form."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=2).flatten(1)


class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (Qiao et al. 2019): each filter at zero mean and unit variance, which
    pairs well with GroupNorm. Standardised in float32 (eps 1e-5) whatever the weight dtype; the seed computes in
    the input dtype and raises eps to 1e-3 outside float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight.float(), dim=(1, 2, 3), keepdim=True, correction=0)
        weight = ((self.weight.float() - mean) * torch.rsqrt(var + 1e-5)).to(self.weight.dtype)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ResBlock(nn.Module):
    """Two weight-standardised 3x3 convs with GroupNorm; after the first norm the features are scaled by the time
    embedding and shifted by the class embedding (each through SiLU + Linear), as the seed does. Residual with a
    1x1 conv where the width changes."""

    def __init__(self, cin: int, cout: int, t_dim: int, c_dim: int | None, dropout: float):
        super().__init__()
        self.t_proj = nn.Linear(t_dim, cout)
        self.c_proj = nn.Linear(c_dim, cout) if c_dim else None
        # The seed's rule: 8 groups when both widths are multiples of 8 (and > 4), else 1.
        self.conv1 = WSConv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(8 if cin > 4 and cin % 8 == 0 and cout % 8 == 0 else 1, cout)
        self.conv2 = WSConv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(8 if cout > 4 and cout % 8 == 0 else 1, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        # The seed's res block takes a dropout rate and ignores it; we apply it between the convs (as DDPM does).
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(self.conv1(x)) * self.t_proj(F.silu(t_emb))[:, :, None, None]
        if self.c_proj is not None:
            h = h + self.c_proj(F.silu(c_emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(h)))
        h = F.silu(self.norm2(h))
        return h + (x if self.skip is None else self.skip(x))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt (Liu et al. 2022) as in the seed: depthwise 7x7, GroupNorm, [x * time + class], 1x1 to 2x width,
    GELU, 1x1, channel dropout; residual with a 1x1 conv where the width changes. Without t_dim it is the plain
    block of the output heads."""

    def __init__(self, cin: int, cout: int, t_dim: int | None = None, c_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv2d(cin, cin, 7, padding=3, groups=cin)
        self.norm = nn.GroupNorm(_groups_of_four(cin), cin)
        self.t_proj = nn.Linear(t_dim, cin) if t_dim else None  # applied without an activation, as the seed
        self.c_proj = nn.Linear(c_dim, cin) if c_dim else None  # (the seed fails here when unconditional)
        self.pwconv1 = nn.Conv2d(cin, 2 * cin, 1)  # the seed expands 2x, not ConvNeXt's 4x
        self.pwconv2 = nn.Conv2d(2 * cin, cout, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor | None = None,
                c_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(self.dwconv(x))
        if self.t_proj is not None:
            h = h * self.t_proj(t_emb)[:, :, None, None]
        if self.c_proj is not None:
            h = h + self.c_proj(c_emb)[:, :, None, None]
        h = self.dropout(self.pwconv2(F.gelu(self.pwconv1(h))))
        return h + (x if self.skip is None else self.skip(x))


class ClassAttention(nn.Module):
    """Attention among the channels whose queries and keys come from the class embedding: each channel c gets a
    scalar query q_c and key k_c, weights softmax_d(q_c k_d / sqrt(C)), and the output channel c mixes the
    normalised input channels d with those weights; then 1x1 conv, GroupNorm, residual.

    The seed's einsum sums the weights over d before applying them, so its block never mixes channels (the
    weights sum to one); this is the mixing it describes, with the same parameters."""

    def __init__(self, channels: int, c_dim: int):
        super().__init__()
        self.norm_in = nn.GroupNorm(_groups_of_four(channels), channels)
        self.query = nn.Linear(c_dim, channels)
        self.key = nn.Linear(c_dim, channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.norm_out = nn.GroupNorm(_groups_of_four(channels), channels)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor | None = None,
                c_emb: torch.Tensor | None = None) -> torch.Tensor:
        b, ch, h, w = x.shape
        # For attention(): channels are the tokens and each image row a head whose values are the row's w pixels
        # (the weights are the same for every row). The scalar query/key sits in feature 0 of a zero-padded
        # w-vector, so the dot product is q_c k_d and every attention kernel accepts the head width;
        # attention() divides by sqrt(w), the seed by sqrt(C): the query is rescaled by sqrt(w / C).
        q = self.query(c_emb) * math.sqrt(w / ch)
        q = F.pad(q[:, None, :, None], (0, w - 1)).expand(b, h, ch, w).contiguous()
        k = F.pad(self.key(c_emb)[:, None, :, None], (0, w - 1)).expand(b, h, ch, w).contiguous()
        v = self.norm_in(x).transpose(1, 2)  # [B, H, C, W]
        mixed = attention(q, k, v).transpose(1, 2)  # [B, C, H, W]
        return x + self.norm_out(self.proj(mixed))


class WindowAttention(nn.Module):
    """Self-attention among the pixels of each non-overlapping window x window patch (the whole map when it is
    smaller), the seed's "atn": GroupNorm, 1x1 conv to q, k, v, attention, 1x1 conv, residual.

    The seed's patch reshapes mix channels and patches, and it scales by 1/sqrt(window) (with one head of all
    channels); here windows are cut exactly and attention() scales by 1/sqrt(channels per head)."""

    def __init__(self, channels: int, window: int, num_heads: int = 1):
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.norm = nn.GroupNorm(_groups_of_four(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor | None = None,
                c_emb: torch.Tensor | None = None) -> torch.Tensor:
        b, ch, h, w = x.shape
        ph, pw = min(self.window, h), min(self.window, w)
        if h % ph or w % pw:
            raise ValueError(f"DDPMUNet: {self.window}x{self.window} attention windows do not tile a {h}x{w} map")
        nh, nw, heads = h // ph, w // pw, self.num_heads
        # [B, 3C, H, W] -> q, k, v [B * windows, heads, ph * pw tokens, C / heads]
        qkv = self.qkv(self.norm(x)).reshape(b, 3, heads, ch // heads, nh, ph, nw, pw)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * nh * nw, heads, ph * pw, ch // heads)
        out = attention(qkv[0], qkv[1], qkv[2]).reshape(b, nh, nw, heads, ph, pw, ch // heads)
        out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, ch, h, w)
        return x + self.proj(out)


class ChannelAttention(nn.Module):
    """Efficient channel attention (ECA-Net): global average pool, a 1D conv across channels (kernel
    eca_kernel_size(C), no bias), sigmoid, rescale the input. No residual, as in the seed."""

    def __init__(self, channels: int):
        super().__init__()
        k = eca_kernel_size(channels)
        # A 1 x k Conv2d over a [B, 1, 1, C] row, not a Conv1d: the seed found that Conv1d's weight gradient
        # triggers DDP's "grad strides do not match bucket view strides" warning; the operation is the same.
        self.conv = nn.Conv2d(1, 1, (1, k), padding=(0, k // 2), bias=False)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor | None = None,
                c_emb: torch.Tensor | None = None) -> torch.Tensor:
        weights = torch.sigmoid(self.conv(x.mean(dim=(2, 3))[:, None, None, :]))  # [B, 1, 1, C]
        return x * weights[:, 0, 0, :, None, None]


class ClassEmbedding(nn.Embedding):
    """num_classes + 1 rows: row 0 is the null class, row y + 1 class y.

    The seed embeds labels with Linear(num_classes, c_dim, bias=False) on one-hot vectors (PyTorch's default init
    gives each class vector U(+-1/sqrt(num_classes)) entries) and multiplies the vector of null examples by zero.
    Row 0 is that zero vector; padding_idx keeps it zero (no gradient reaches it)."""

    def __init__(self, num_classes: int, c_dim: int):
        super().__init__(num_classes + 1, c_dim, padding_idx=0)

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_embeddings - 1)
        nn.init.uniform_(self.weight, -bound, bound)
        with torch.no_grad():
            self.weight[0].zero_()


class Stage(nn.Module):
    """`blk_types` in order (the seed's unetBlock). The first res/conv block goes cin -> cout; blocks before it run
    at cin, blocks after it at cout (the seed assumes the first block changes the width)."""

    def __init__(self, cin: int, cout: int, cfg: dict, c_dim: int | None):
        super().__init__()
        self.blocks, width = nn.ModuleList(), cin
        for kind in cfg["blk_types"]:
            if kind == "res":
                self.blocks.append(ResBlock(width, cout, cfg["t_dim"], c_dim, cfg["dropout"]))
            elif kind == "conv":
                self.blocks.append(ConvNeXtBlock(width, cout, cfg["t_dim"], c_dim, cfg["dropout"]))
            elif kind == "clsAtn":
                self.blocks.append(ClassAttention(width, c_dim))
            elif kind == "atn":
                self.blocks.append(WindowAttention(width, cfg["atn_resolution"], cfg["num_heads"]))
            else:
                self.blocks.append(ChannelAttention(width))
            width = cout if kind in ("res", "conv") else width

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c_emb: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, t_emb, c_emb)
        return x


@MODELS.register_module()
class DDPMUNet(nn.Module):
    """F(x[B, C, H, W], t[B] timesteps (float, e.g. 0..999), class_labels[B] int64 or None) -> [B, C or 2C, H, W].

    With learn_sigma the output is [eps prediction (C), variance interpolation v (C)] (improved DDPM's order).
    Labels are class ids 0..num_classes-1; -1 is the null class (classifier-free guidance), None means all null;
    an unconditional network ignores them. `preset` picks PRESETS; any argument given explicitly replaces it.
    """

    def __init__(self, preset: str | None = None, *, img_channels: int | None = None,
                 img_resolution: int | None = None, num_classes: int | None = None, emb_ch: int | None = None,
                 ch_mult: int | None = None, num_levels: int | None = None,
                 blk_types: str | tuple[str, ...] | list[str] | None = None, t_dim: int | None = None,
                 c_dim: int | None = None, atn_resolution: int | None = None, learn_sigma: bool | None = None,
                 dropout: float | None = None, num_heads: int | None = None):
        super().__init__()
        cfg = resolve_config(preset, dict(
            img_channels=img_channels, img_resolution=img_resolution, num_classes=num_classes, emb_ch=emb_ch,
            ch_mult=ch_mult, num_levels=num_levels, blk_types=blk_types, t_dim=t_dim, c_dim=c_dim,
            atn_resolution=atn_resolution, learn_sigma=learn_sigma, dropout=dropout, num_heads=num_heads))
        self.config, self.preset = cfg, preset
        self.img_channels, self.img_resolution = cfg["img_channels"], cfg["img_resolution"]
        conditional = cfg["num_classes"] > 0 and cfg["c_dim"] != -1
        self.label_dim = cfg["num_classes"] if conditional else 0
        self.learn_sigma, self.out_channels, self.t_dim = cfg["learn_sigma"], _out_channels(cfg), cfg["t_dim"]
        c_dim = cfg["c_dim"] if conditional else None
        widths = _widths(cfg)

        # Stem: input conv and the two embeddings (kept by the root FSDP unit).
        self.conv_in = nn.Conv2d(self.img_channels, widths[0], 7, padding=3)
        self.t_mlp = nn.Sequential(nn.Linear(self.t_dim, self.t_dim), nn.GELU(), nn.Linear(self.t_dim, self.t_dim))
        self.class_emb = ClassEmbedding(self.label_dim, c_dim) if conditional else None

        levels = range(1, cfg["num_levels"] + 1)
        self.down = nn.ModuleList(Stage(widths[lv - 1], widths[lv], cfg, c_dim) for lv in levels)
        self.downsample = nn.ModuleList(nn.Conv2d(widths[lv], widths[lv], 3, stride=2, padding=1) for lv in levels)
        bottom = widths[-1]
        self.mid = nn.ModuleList([Stage(bottom, bottom, cfg, c_dim), ChannelAttention(bottom),
                                  Stage(bottom, bottom, cfg, c_dim)])
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(widths[lv], widths[lv], 4, stride=2, padding=1)
                                      for lv in reversed(levels))
        self.up = nn.ModuleList(Stage(2 * widths[lv], widths[lv - 1], cfg, c_dim) for lv in reversed(levels))
        self.final = nn.ModuleList([Stage(widths[0], widths[0], cfg, c_dim),
                                    Stage(widths[0], self.out_channels, cfg, c_dim)])

        # Head: 7x7 conv, then a ConvNeXt block per output half (the seed's out_mean / out_var).
        self.conv_out = nn.Conv2d(self.out_channels, self.out_channels, 7, padding=3)
        self.eps_head = ConvNeXtBlock(self.img_channels, self.img_channels)
        self.var_head = ConvNeXtBlock(self.img_channels, self.img_channels) if self.learn_sigma else None

    def fsdp_units(self) -> list[nn.Module]:
        """Every block of every stage, the resampling convs and the middle channel attention, in forward order;
        the stem and head stay with the root. Each unit's forward runs whole and returns a fresh tensor."""
        units: list[nn.Module] = []
        for stage, down in zip(self.down, self.downsample, strict=True):
            units += [*stage.blocks, down]
        for module in self.mid:
            units += list(module.blocks) if isinstance(module, Stage) else [module]
        for up, stage in zip(self.upsample, self.up, strict=True):
            units += [up, *stage.blocks]
        for stage in self.final:
            units += list(stage.blocks)
        return units

    def embed_labels(self, class_labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """[B] class ids (-1 = null) or None (all null) -> [B, c_dim]; None when unconditional."""
        if self.class_emb is None:
            return None
        if class_labels is None:
            class_labels = torch.full((batch,), -1, dtype=torch.long, device=device)
        if class_labels.ndim != 1 or class_labels.dtype.is_floating_point:
            raise ValueError(f"DDPMUNet: class_labels must be integer ids of shape [B], got {class_labels.dtype} "
                             f"{tuple(class_labels.shape)}")
        return self.class_emb(class_labels.long() + 1)  # row 0 is the null class

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        t_emb = self.t_mlp(timestep_embedding(t, self.t_dim).to(x.dtype))
        c_emb = self.embed_labels(class_labels, x.shape[0], x.device)
        h, skips = self.conv_in(x), []
        for stage, down in zip(self.down, self.downsample, strict=True):
            h = stage(h, t_emb, c_emb)
            skips.append(h)
            h = down(h)
        for module in self.mid:
            h = module(h, t_emb, c_emb)
        for up, stage in zip(self.upsample, self.up, strict=True):
            h = stage(torch.cat([up(h), skips.pop()], dim=1), t_emb, c_emb)
        for stage in self.final:
            h = stage(h, t_emb, c_emb)
        h = self.conv_out(h)
        eps = self.eps_head(h[:, : self.img_channels])
        if self.var_head is None:
            return eps
        return torch.cat([eps, self.var_head(h[:, self.img_channels:])], dim=1)
