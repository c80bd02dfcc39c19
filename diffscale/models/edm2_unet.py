"""The magnitude-preserving U-Net of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics
of Diffusion Models", config G, Fig. 21). Pure nn.Module: preconditioning is `diffusion.edm.EDM2Precond`.

Every layer keeps unit-variance activations unit variance (layers/mp.py): MP convolutions with weight
normalisation, MP SiLU, MP sums for the residual (t = 0.3) and embedding (t = 0.5) branches, MP
concatenation for the skips, pixel norm in the encoder, cosine self-attention, and a learned output gain
that starts at zero. The blocks are two nn.ModuleLists, so FSDP2 shards block by block.

Forced weight normalisation (EDM2 eq. 66) is a projection of the stored weights that must persist between
steps. In a training forward each MPConv renormalises its weight in place, as EDM2 does; that is exact where
the module holds the master weights (one process, DDP). Under FSDP2 / ZeRO-3 the forward sees gathered
copies, so the first training forward turns that off (the forward is then a pure function of the shards) and
`force_weight_norm_()` must run on the shards after each optimizer step (layers/mp.py says which strategies
it reaches).

Sizes (PRESETS): `channels` is the base width (64 xxs ... 448 xxl); img512 = 4x64x64 latents, 1000
classes; img64 = 3x64x64 pixels, 1000 classes; tiny = 3x64x64 Tiny ImageNet, 200 classes.
"""

import math

import torch
from torch import nn

from diffscale.errors import closest
from diffscale.models.layers.attention import attention
from diffscale.models.layers.mp import (
    MPConv,
    MPFourier,
    force_weight_norm_,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
)
from diffscale.registry import MODELS

# Architecture defaults (EDM2 config G); a preset or an explicit argument replaces any of them.
DEFAULTS = dict(
    img_resolution=64,  # input height = width (pixels or latent cells)
    img_channels=None,  # input channels: required without a preset
    label_dim=0,  # number of classes; 0 = unconditional
    channels=192,  # base width; level widths are channels * channel_mult
    channel_mult=(1, 2, 3, 4),  # per-resolution width multipliers: 64, 32, 16, 8 for 64x64 inputs
    num_blocks=3,  # residual blocks per resolution in the encoder (decoder: num_blocks + 1)
    attn_resolutions=(16, 8),  # resolutions with self-attention
    dropout=0.0,  # dropout in the residual branch (0.10 for M and larger)
    channels_per_head=64,  # attention head width
)
_SIZES = {"xxs": 64, "xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}
_DROPOUT = {"xxs": 0.0, "xs": 0.0, "s": 0.0, "m": 0.10, "l": 0.10, "xl": 0.10, "xxl": 0.10}  # EDM2's training presets
_DATA = {  # what each family trains on
    "img512": dict(img_channels=4, label_dim=1000),  # ImageNet-512 as 4x64x64 SD-VAE latents
    "img64": dict(img_channels=3, label_dim=1000),  # ImageNet-64 pixels
    "tiny": dict(img_channels=3, label_dim=200),  # Tiny ImageNet 64x64 pixels (the AJEST experiments)
}
_FAMILIES = {"img512": list(_SIZES), "img64": ["xs", "s", "m", "l", "xl"], "tiny": ["xxs", "xs"]}
PRESETS: dict[str, dict] = {
    f"{family}-{size}": dict(_DATA[family], channels=_SIZES[size], dropout=_DROPOUT[size])
    for family, sizes in _FAMILIES.items() for size in sizes
}


def resolve_config(preset: str | None, overrides: dict) -> dict:
    """DEFAULTS, then the preset, then every override that is not None (an explicit argument wins)."""
    cfg = dict(DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"EDM2UNet: unknown preset '{preset}'; closest: {closest(preset, PRESETS)}")
        cfg.update(PRESETS[preset])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["img_channels"] is None:
        raise ValueError("EDM2UNet: give a preset or img_channels")
    levels = len(cfg["channel_mult"])
    if cfg["img_resolution"] % 2 ** (levels - 1):
        raise ValueError(f"EDM2UNet: img_resolution {cfg['img_resolution']} does not halve {levels - 1} times")
    return cfg


class Block(nn.Module):
    """Encoder ('enc') or decoder ('dec') residual block with optional cosine self-attention (EDM2 Fig. 21).

    forward(x[B, in, H, W], emb[B, emb]) -> [B, out, H', W'] with H' = H/2 ('down'), 2H ('up') or H.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample: str = "keep", attention: bool = False, channels_per_head: int = 64,
                 dropout: float = 0.0, res_balance: float = 0.3, attn_balance: float = 0.3,
                 clip_act: float | None = 256.0, takes_skip: bool = False):
        super().__init__()
        if attention and out_channels % channels_per_head:
            raise ValueError(f"EDM2UNet: {out_channels} channels do not split into heads of {channels_per_head}")
        self.out_channels, self.flavor, self.resample = out_channels, flavor, resample
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.takes_skip = takes_skip  # a decoder block that first concatenates an encoder skip
        # Gains are shape [1], not scalars as in EDM2: FSDP2 cannot shard 0-d parameters.
        self.emb_gain = nn.Parameter(torch.zeros(1))  # the embedding's modulation starts at c = 1
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels)
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, (1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            x = nn.functional.avg_pool2d(x, 2)  # the [1, 1] box filter, stride 2
        elif self.resample == "up":
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm: the encoder's main path stays unit RMS per pixel
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1  # per-channel modulation by the noise/class embedding
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attend(x), t=self.attn_balance)
        return x if self.clip_act is None else x.clamp(-self.clip_act, self.clip_act)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine self-attention (EDM2 Sec. 2.4): q, k, v pixel-normalised per head, then softmax(q k^T / sqrt(d)) v."""
        b, c, h, w = x.shape
        # qkv channels are laid out [head][d][q|k|v] (EDM2's layout, so its weights could be converted).
        y = self.attn_qkv(x).reshape(b, self.num_heads, c // self.num_heads, 3, h * w)
        q, k, v = (t.transpose(2, 3) for t in normalize(y, dim=2).unbind(3))  # each [B, heads, N, d]
        y = attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return self.attn_proj(y)


@MODELS.register_module()
class EDM2UNet(nn.Module):
    """F(x[B, C, H, W], noise_labels[B], class_labels[B, label_dim] one-hot float or None) -> [B, C, H, W].

    `preset` picks a published size (PRESETS); any other argument given explicitly replaces the preset's.
    """

    def __init__(self, preset: str | None = None, *, channels: int | None = None, img_resolution: int | None = None,
                 img_channels: int | None = None, label_dim: int | None = None,
                 channel_mult: tuple[int, ...] | None = None, num_blocks: int | None = None,
                 attn_resolutions: tuple[int, ...] | None = None, dropout: float | None = None,
                 channels_per_head: int | None = None, channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, label_balance: float = 0.5, concat_balance: float = 0.5,
                 res_balance: float = 0.3, attn_balance: float = 0.3, clip_act: float | None = 256.0,
                 force_wn: bool = True):
        super().__init__()
        cfg = resolve_config(preset, dict(
            channels=channels, img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
            channel_mult=channel_mult, num_blocks=num_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
            channels_per_head=channels_per_head))
        self.config, self.preset = cfg, preset
        self.img_resolution, self.img_channels, self.label_dim = cfg["img_resolution"], cfg["img_channels"], \
            cfg["label_dim"]
        self.label_balance, self.concat_balance = label_balance, concat_balance
        widths = [cfg["channels"] * m for m in cfg["channel_mult"]]
        c_noise = cfg["channels"] * channel_mult_noise if channel_mult_noise else widths[0]
        c_emb = cfg["channels"] * channel_mult_emb if channel_mult_emb else max(widths)
        block_kw = dict(emb_channels=c_emb, channels_per_head=cfg["channels_per_head"], dropout=cfg["dropout"],
                        res_balance=res_balance, attn_balance=attn_balance, clip_act=clip_act)

        self.emb_fourier = MPFourier(c_noise)
        self.emb_noise = MPConv(c_noise, c_emb)
        self.emb_label = MPConv(self.label_dim, c_emb) if self.label_dim else None
        # +1 input channel of ones: lets the first convolution see the image border through zero padding.
        self.conv_in = MPConv(self.img_channels + 1, widths[0], (3, 3))
        self.enc, self.dec = self._build(widths, cfg, block_kw)
        self.out_gain = nn.Parameter(torch.zeros(1))  # the network starts as F = 0: D = c_skip x ([1]: FSDP2)
        self.out_conv = MPConv(widths[0], self.img_channels, (3, 3))
        for m in self.modules():
            if isinstance(m, MPConv):
                m.force_wn = force_wn

    def force_weight_norm_(self) -> int:
        """Renormalise every MP weight in place (EDM2 eq. 66); the trainer runs it as a post-step function
        (`Strategy.post_step`) on the weights the optimizer updates. See layers/mp.py."""
        return force_weight_norm_(self)

    @staticmethod
    def _build(widths: list[int], cfg: dict, kw: dict) -> tuple[nn.ModuleList, nn.ModuleList]:
        """Encoder: per level a downsampling block (not at the top) and num_blocks blocks. Decoder: at the
        bottom two blocks (the first with attention), elsewhere an upsampling block; then num_blocks + 1
        blocks per level, each taking one encoder skip (EDM2 Fig. 21)."""
        enc, dec, skips, cout = nn.ModuleList(), nn.ModuleList(), [widths[0]], widths[0]
        for level, width in enumerate(widths):
            attn = (cfg["img_resolution"] >> level) in cfg["attn_resolutions"]
            if level > 0:
                enc.append(Block(cout, cout, flavor="enc", resample="down", **kw))
                skips.append(cout)
            for _ in range(cfg["num_blocks"]):
                enc.append(Block(cout, width, flavor="enc", attention=attn, **kw))
                cout = width
                skips.append(cout)
        for level in reversed(range(len(widths))):
            attn = (cfg["img_resolution"] >> level) in cfg["attn_resolutions"]
            if level == len(widths) - 1:
                dec.append(Block(cout, cout, flavor="dec", attention=True, **kw))
                dec.append(Block(cout, cout, flavor="dec", **kw))
            else:
                dec.append(Block(cout, cout, flavor="dec", resample="up", **kw))
            for _ in range(cfg["num_blocks"] + 1):
                dec.append(Block(cout + skips.pop(), widths[level], flavor="dec", attention=attn, takes_skip=True,
                                 **kw))
                cout = widths[level]
        return enc, dec

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if class_labels is None:  # unconditional: the all-zero label (CFG's null class)
                class_labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
            # One-hot labels have norm 1; scaling by sqrt(label_dim) gives them unit RMS, like every MP input.
            emb = mp_sum(emb, self.emb_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim)),
                         t=self.label_balance)
        emb = mp_silu(emb)

        x = self.conv_in(torch.cat([x, torch.ones_like(x[:, :1])], dim=1))
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        for block in self.dec:
            if block.takes_skip:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)
