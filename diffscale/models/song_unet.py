"""EDM's CIFAR-10 networks: DDPM++ and NCSN++ (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations"), in the form Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative
Models", App. F.2, Table 7) train them. Pure nn.Module: the preconditioning is `diffusion.edm.EDMPrecond`.

One U-Net, two presets: DDPM++ (positional noise embedding, plain encoder, box filter [1, 1]) and NCSN++ (random
Fourier features of width 2C, a residual "progressive input" encoder that re-reads the image at every resolution,
binomial filter [1, 3, 3, 1]). Residual blocks are GroupNorm -> SiLU -> conv, plus the embedding, GroupNorm -> SiLU
-> dropout -> conv, all scaled by sqrt(1/2); some carry one-head self-attention. Weights start as EDM starts them:
Xavier-uniform everywhere, the last conv of every residual branch and of the output at 1e-5 of it, q/k/v at sqrt(0.2).

State-dict keys equal those of NVlabs/edm's `SongUNet` (module names, ModuleDict entry names such as
`enc.16x16_block0`, `dec.32x32_aux_conv`, and the up/down `resample_filter` buffers), so an official state dict
loads with the identity mapping; inside EDM's `EDMPrecond` the network is `model.`, inside ours `net.`.

The EDM CIFAR-10 teacher (the published `edm-cifar10-32x32-cond-vp.pkl`, trained with augmentation; NCSN++:
`-cond-ve.pkl`, preset='ncsnpp'):

    model = dict(type='EDMPrecond', label_dim=10, logvar_channels=0,
                 net=dict(type='SongUNet', preset='ddpmpp', label_dim=10, augment_dim=9))

Parameters (EDMPrecond adds none with logvar_channels=0): DDPM++ 55,734,147 and NCSN++ 56,398,339 with
augment_dim=0; augment_dim=9 adds 9 x 128 (DDPM++) or 9 x 256 (NCSN++). Our EDMPrecond passes no augmentation
labels, so map_augment gets no gradient when training here: use augment_dim=0 (or DDP find_unused_parameters).
"""

import math

import torch
from torch import nn
from torch.nn.functional import silu

from diffscale.errors import ConfigError
from diffscale.models.layers.attention import attention
from diffscale.models.presets import check_positive_ints, merge_preset
from diffscale.registry import MODELS

DEFAULTS = dict(
    img_resolution=32,  # input height = width (pixels)
    in_channels=3,  # input channels
    out_channels=3,  # output channels
    label_dim=0,  # number of classes; 0 = unconditional
    augment_dim=0,  # width of the augmentation labels (EDM's augment pipe: 9); 0 = none
    model_channels=128,  # base width; level widths are model_channels * channel_mult
    channel_mult=(1, 2, 2, 2),  # per-resolution width multipliers
    channel_mult_emb=4,  # embedding width = model_channels * channel_mult_emb
    num_blocks=4,  # residual blocks per resolution in the encoder (decoder: num_blocks + 1)
    attn_resolutions=(16,),  # resolutions whose blocks carry self-attention
    dropout=0.10,  # dropout inside the residual branch
    label_dropout=0.0,  # probability of dropping an example's label in training (classifier-free guidance)
    embedding_type="positional",  # noise embedding: 'positional' (DDPM++) | 'fourier' (NCSN++)
    channel_mult_noise=1,  # noise embedding width = model_channels * channel_mult_noise (DDPM++ 1, NCSN++ 2)
    encoder_type="standard",  # 'standard' | 'skip' (image downsampled into each level) | 'residual' (NCSN++)
    decoder_type="standard",  # 'standard' | 'skip' (an output conv at every level, upsampled and summed)
    resample_filter=(1, 1),  # separable FIR filter of up/downsampling: (1, 1) box, (1, 3, 3, 1) binomial
)
# EDM's CIFAR-10 runs (its train.py, --arch ddpmpp | ncsnpp): widths 256 at 32, 16 and 8 pixels, dropout 0.13.
_CIFAR10 = dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=128, channel_mult=(2, 2, 2),
                dropout=0.13)
PRESETS: dict[str, dict] = {
    "ddpmpp": dict(_CIFAR10, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                   decoder_type="standard", resample_filter=(1, 1)),
    "ncsnpp": dict(_CIFAR10, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                   decoder_type="standard", resample_filter=(1, 3, 3, 1)),
}
_CHOICES = dict(embedding_type=("positional", "fourier"), encoder_type=("standard", "skip", "residual"),
                decoder_type=("standard", "skip"))
SKIP_SCALE = math.sqrt(0.5)  # every residual sum is scaled so two unit-variance branches stay unit variance
ZERO_SCALE = 1e-5  # "almost zero" init of the last conv of each branch: blocks start near the identity
ATTN_SCALE = math.sqrt(0.2)  # q, k, v projection init


def resolve_config(preset: str | None, overrides: dict) -> dict:
    """DEFAULTS, then the preset, then every override that is not None (an explicit argument wins); validated."""
    cfg = merge_preset("SongUNet", DEFAULTS, PRESETS, preset, overrides)
    check_positive_ints("SongUNet", cfg, ("img_resolution", "in_channels", "out_channels", "model_channels",
                                          "channel_mult_emb", "num_blocks", "channel_mult_noise"))
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"SongUNet: {key}: expected one of {', '.join(choices)}, got {cfg[key]!r}")
    if cfg["img_resolution"] % 2 ** (len(cfg["channel_mult"]) - 1):
        raise ConfigError(f"SongUNet: img_resolution {cfg['img_resolution']} does not halve "
                          f"{len(cfg['channel_mult']) - 1} times")
    if cfg["model_channels"] * min(cfg["channel_mult"]) < 4 or cfg["model_channels"] * cfg["channel_mult_noise"] % 2:
        raise ConfigError("SongUNet: model_channels too small (GroupNorm needs 4 channels per group, the noise "
                          "embedding an even width)")
    return cfg


def init_weight_(w: torch.Tensor, fan_in: int, fan_out: int, scale: float = 1.0, mode: str = "xavier_uniform"):
    """EDM's weight init: Xavier or Kaiming (uniform or normal) from the given fans, times `scale`."""
    with torch.no_grad():
        if mode == "xavier_uniform":
            w.uniform_(-1, 1).mul_(math.sqrt(6 / (fan_in + fan_out)))
        elif mode == "xavier_normal":
            w.normal_().mul_(math.sqrt(2 / (fan_in + fan_out)))
        elif mode == "kaiming_uniform":
            w.uniform_(-1, 1).mul_(math.sqrt(3 / fan_in))
        elif mode == "kaiming_normal":
            w.normal_().mul_(math.sqrt(1 / fan_in))
        else:
            raise ValueError(f"init mode: unknown '{mode}'")
        w.mul_(scale)
    return w


def linear(in_features: int, out_features: int, bias: bool = True, scale: float = 1.0) -> nn.Linear:
    """nn.Linear with EDM's Xavier-uniform weights (times `scale`) and a zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    init_weight_(layer.weight, in_features, out_features, scale)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """32 groups, fewer where a group would hold under 4 channels."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=eps)


class Conv(nn.Module):
    """k x k convolution (k = 0: none, resampling only) with optional 2x FIR up- or downsampling before it.

    forward(x[B, in, H, W]) -> [B, out, H', W'], H' = 2H ('up'), H/2 ('down') or H. `fused` (downsampling only)
    convolves at full resolution, then filters with stride 2 (NCSN++'s progressive input).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, resample: str = "keep",
                 resample_filter: tuple[int, ...] = (1, 1), fused: bool = False, scale: float = 1.0):
        super().__init__()
        if fused and resample != "down":
            raise ValueError("Conv: fused resampling is implemented for downsampling only")
        self.in_channels, self.out_channels, self.resample, self.fused = in_channels, out_channels, resample, fused
        self.weight = self.bias = None
        if kernel:
            fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
            self.weight = nn.Parameter(init_weight_(torch.empty(out_channels, in_channels, kernel, kernel),
                                                    fan_in, fan_out, scale))
            self.bias = nn.Parameter(torch.zeros(out_channels))
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()  # [1, 1, n, n], sums to 1
        self.register_buffer("resample_filter", f if resample != "keep" else None)

    def _fir(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Depthwise FIR resampling by 2 (transposed for 'up', strided for 'down'), 'same'-style padding."""
        c, pad = x.shape[1], (f.shape[-1] - 1) // 2
        if self.resample == "up":  # 4 f: the filter's taps land on a zero-stuffed grid with 1/4 of the energy
            return nn.functional.conv_transpose2d(x, (4 * f).repeat(c, 1, 1, 1), groups=c, stride=2, padding=pad)
        return nn.functional.conv2d(x, f.repeat(c, 1, 1, 1), groups=c, stride=2, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        if self.fused and w is not None:
            # Convolve with the padding of both, then filter without: the same output grid as filter-then-conv.
            x = nn.functional.conv2d(x, w, padding=w_pad + (f.shape[-1] - 1) // 2)
            x = nn.functional.conv2d(x, f.repeat(x.shape[1], 1, 1, 1), groups=x.shape[1], stride=2)
        else:
            if f is not None:
                x = self._fir(x, f)
            if w is not None:
                x = nn.functional.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class PositionalEmbedding(nn.Module):
    """DDPM++'s sinusoidal noise embedding [sin | cos] of x * 10000^(-i / (C/2 - 1)), i < C/2. No weights."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, dtype=torch.float32, device=x.device) / (half - 1))
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.sin(), x.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """NCSN++'s random Fourier features [sin | cos](2 pi f x), f ~ N(0, scale^2) fixed (buffer `freqs` [C/2])."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.sin(), x.cos()], dim=1)


class SongBlock(nn.Module):
    """Residual block, optionally resampling and with one-head self-attention after the residual sum.

    forward(x[B, in, H, W], emb[B, emb]) -> [B, out, H', W']. Module names are EDM's UNetBlock's: norm0, conv0,
    affine, norm1, conv1, skip (a 1x1 conv where the shape changes), norm2, qkv, proj (attention).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, resample: str = "keep",
                 attention: bool = False, dropout: float = 0.0, resample_filter: tuple[int, ...] = (1, 1),
                 takes_skip: bool = False, eps: float = 1e-6):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout = in_channels, out_channels, dropout
        self.attention, self.takes_skip = attention, takes_skip  # takes_skip: a decoder block fed an encoder skip
        rs = dict(resample=resample, resample_filter=resample_filter)
        self.norm0 = group_norm(in_channels, eps)
        self.conv0 = Conv(in_channels, out_channels, 3, **rs)
        self.affine = linear(emb_channels, out_channels)  # additive embedding (no scale-and-shift in DDPM++)
        self.norm1 = group_norm(out_channels, eps)
        self.conv1 = Conv(out_channels, out_channels, 3, scale=ZERO_SCALE)
        self.skip = Conv(in_channels, out_channels, 1, **rs) if in_channels != out_channels or resample != "keep" \
            else None
        if attention:
            self.norm2 = group_norm(out_channels, eps)
            self.qkv = Conv(out_channels, 3 * out_channels, 1, scale=ATTN_SCALE)
            self.proj = Conv(out_channels, out_channels, 1, scale=ZERO_SCALE)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(silu(self.norm0(x)))
        h = silu(self.norm1(h + self.affine(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv1(nn.functional.dropout(h, p=self.dropout, training=self.training))
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if self.attention:
            b, c, hh, ww = x.shape
            # qkv channels are laid out [channel][q|k|v] (EDM's layout, so its weights load unchanged); one head.
            q, k, v = (t.transpose(2, 3) for t in self.qkv(self.norm2(x)).reshape(b, 1, c, 3, hh * ww).unbind(3))
            a = attention(q, k, v).transpose(2, 3).reshape(b, c, hh, ww)  # softmax(q k^T / sqrt(c)) v
            x = (self.proj(a) + x) * SKIP_SCALE
        return x


@MODELS.register_module()
class SongUNet(nn.Module):
    """F(x[B, in, H, W], noise_labels[B], class_labels[B, label_dim] one-hot float | None,
    augment_labels[B, augment_dim] | None) -> [B, out, H, W].

    `preset` ('ddpmpp' | 'ncsnpp', EDM's CIFAR-10 networks) sets the architecture; any argument given explicitly
    replaces the preset's (DEFAULTS documents each). None class labels are the zero label (unconditional).
    """

    def __init__(self, preset: str | None = None, *, img_resolution: int | None = None,
                 in_channels: int | None = None, out_channels: int | None = None, label_dim: int | None = None,
                 augment_dim: int | None = None, model_channels: int | None = None,
                 channel_mult: tuple[int, ...] | None = None, channel_mult_emb: int | None = None,
                 num_blocks: int | None = None, attn_resolutions: tuple[int, ...] | None = None,
                 dropout: float | None = None, label_dropout: float | None = None, embedding_type: str | None = None,
                 channel_mult_noise: int | None = None, encoder_type: str | None = None,
                 decoder_type: str | None = None, resample_filter: tuple[int, ...] | None = None):
        super().__init__()
        cfg = resolve_config(preset, dict(
            img_resolution=img_resolution, in_channels=in_channels, out_channels=out_channels, label_dim=label_dim,
            augment_dim=augment_dim, model_channels=model_channels, channel_mult=channel_mult,
            channel_mult_emb=channel_mult_emb, num_blocks=num_blocks, attn_resolutions=attn_resolutions,
            dropout=dropout, label_dropout=label_dropout, embedding_type=embedding_type,
            channel_mult_noise=channel_mult_noise, encoder_type=encoder_type, decoder_type=decoder_type,
            resample_filter=resample_filter))
        self.config, self.preset = cfg, preset
        # What a sample looks like (sampling/generate.py sample_shape: SampleHook, tools/generate.py without a shape).
        self.img_channels, self.img_resolution = cfg["in_channels"], cfg["img_resolution"]
        self.label_dim, self.augment_dim, self.label_dropout = cfg["label_dim"], cfg["augment_dim"], \
            cfg["label_dropout"]
        noise_ch = cfg["model_channels"] * cfg["channel_mult_noise"]
        emb_ch = cfg["model_channels"] * cfg["channel_mult_emb"]

        # Mapping network: noise embedding (+ label, + augmentation embeddings) -> two SiLU layers.
        self.map_noise = PositionalEmbedding(noise_ch) if cfg["embedding_type"] == "positional" \
            else FourierEmbedding(noise_ch)
        self.map_label = linear(self.label_dim, noise_ch) if self.label_dim else None
        self.map_augment = linear(self.augment_dim, noise_ch, bias=False) if self.augment_dim else None
        self.map_layer0 = linear(noise_ch, emb_ch)
        self.map_layer1 = linear(emb_ch, emb_ch)

        block_kw = dict(emb_channels=emb_ch, dropout=cfg["dropout"], resample_filter=tuple(cfg["resample_filter"]))
        self.roles: dict[str, str] = {}  # 'enc.<name>' / 'dec.<name>' -> what forward does with that entry
        self.enc, skips = self._build_encoder(cfg, block_kw)
        self.dec = self._build_decoder(cfg, block_kw, skips)

    def _add(self, modules: nn.ModuleDict, prefix: str, name: str, role: str, module: nn.Module) -> None:
        modules[name] = module
        self.roles[f"{prefix}.{name}"] = role

    def _build_encoder(self, cfg: dict, kw: dict) -> tuple[nn.ModuleDict, list[int]]:
        """Per level (entries named '<res>x<res>_...'): the input conv at the top, else a downsampling block (and for
        'skip' / 'residual' encoders the image path's resampling), then num_blocks blocks. Returns the encoder
        and the channel count of every skip it leaves for the decoder, in order."""
        enc, mc, rf = nn.ModuleDict(), cfg["model_channels"], kw["resample_filter"]
        cout = caux = cfg["in_channels"]
        skips = []
        for level, mult in enumerate(cfg["channel_mult"]):
            res = cfg["img_resolution"] >> level
            tag = f"{res}x{res}"
            if level == 0:
                self._add(enc, "enc", f"{tag}_conv", "conv", Conv(cout, mc, 3))
                cout = mc
            else:
                self._add(enc, "enc", f"{tag}_down", "block", SongBlock(cout, cout, resample="down", **kw))
                if cfg["encoder_type"] == "skip":  # the image, box-downsampled, joins through a 1x1 conv
                    self._add(enc, "enc", f"{tag}_aux_down", "aux_down", Conv(caux, caux, 0, "down", rf))
                    self._add(enc, "enc", f"{tag}_aux_skip", "aux_skip", Conv(caux, cout, 1))
                if cfg["encoder_type"] == "residual":  # NCSN++: a strided conv of the previous level's sum
                    self._add(enc, "enc", f"{tag}_aux_residual", "aux_residual",
                              Conv(caux, cout, 3, "down", rf, fused=True))
                    caux = cout
            skips.append(cout)
            for idx in range(cfg["num_blocks"]):
                attn = res in cfg["attn_resolutions"]
                self._add(enc, "enc", f"{tag}_block{idx}", "block",
                          SongBlock(cout, mc * mult, attention=attn, **kw))
                cout = mc * mult
                skips.append(cout)
        return enc, skips

    def _build_decoder(self, cfg: dict, kw: dict, skips: list[int]) -> nn.ModuleDict:
        """Per level, bottom up: two blocks at the bottom (the first with attention), else an upsampling block;
        num_blocks + 1 blocks that each take one encoder skip (attention in the last one at attn_resolutions);
        the output GroupNorm + conv at the top level ('skip' decoders: at every level, upsampled and summed)."""
        dec, mc, out = nn.ModuleDict(), cfg["model_channels"], cfg["out_channels"]
        cout, skips, top = skips[-1], list(skips), len(cfg["channel_mult"]) - 1
        for level in reversed(range(len(cfg["channel_mult"]))):
            res = cfg["img_resolution"] >> level
            tag, width = f"{res}x{res}", mc * cfg["channel_mult"][level]
            if level == top:
                self._add(dec, "dec", f"{tag}_in0", "block", SongBlock(cout, cout, attention=True, **kw))
                self._add(dec, "dec", f"{tag}_in1", "block", SongBlock(cout, cout, **kw))
            else:
                self._add(dec, "dec", f"{tag}_up", "block", SongBlock(cout, cout, resample="up", **kw))
            for idx in range(cfg["num_blocks"] + 1):
                attn = idx == cfg["num_blocks"] and res in cfg["attn_resolutions"]
                self._add(dec, "dec", f"{tag}_block{idx}", "block",
                          SongBlock(cout + skips.pop(), width, attention=attn, takes_skip=True, **kw))
                cout = width
            if cfg["decoder_type"] == "skip" or level == 0:
                if cfg["decoder_type"] == "skip" and level < top:
                    self._add(dec, "dec", f"{tag}_aux_up", "aux_up", Conv(out, out, 0, "up", kw["resample_filter"]))
                self._add(dec, "dec", f"{tag}_aux_norm", "aux_norm", group_norm(cout))
                self._add(dec, "dec", f"{tag}_aux_conv", "aux_conv", Conv(cout, out, 3, scale=ZERO_SCALE))
        return dec

    def feature_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of the bottleneck features `forward(..., return_features=True)` returns: the last encoder
        block's output, at the lowest resolution (DDPM++ / NCSN++ at 32 px: [256, 8, 8])."""
        res = self.config["img_resolution"] >> (len(self.config["channel_mult"]) - 1)
        return self.config["model_channels"] * self.config["channel_mult"][-1], res, res

    def fsdp_units(self) -> list[nn.Module]:
        """One unit per residual block; the mapping network, input conv and output layers stay with the root."""
        return [m for m in (*self.enc.values(), *self.dec.values()) if isinstance(m, SongBlock)]

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None) -> torch.Tensor:
        """The embedding [B, emb] every block adds: noise, label and augmentation embeddings, then two layers."""
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:  # unconditional: the all-zero label
                class_labels = torch.zeros(emb.shape[0], self.label_dim, device=emb.device)
            labels = class_labels.to(emb.dtype)
            if self.training and self.label_dropout:  # drop whole labels per example (CFG training)
                labels = labels * (torch.rand(labels.shape[0], 1, device=labels.device) >= self.label_dropout)
            # Scaling by sqrt(label_dim) gives one-hot labels unit second moment per element.
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        return silu(self.map_layer1(silu(self.map_layer0(emb))))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None, return_features: bool = False) -> torch.Tensor:
        """return_features=True: the bottleneck [B, *feature_shape()] instead of the output; the decoder does not
        run (a GAN head's input, as DMD2's `return_bottleneck`)."""
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips, image = [], x  # image: the encoder's second path ('skip' / 'residual' encoders)
        for name, module in self.enc.items():
            role = self.roles[f"enc.{name}"]
            if role == "aux_down":
                image = module(image)
            elif role == "aux_skip":
                x = skips[-1] = x + module(image)
            elif role == "aux_residual":  # progressive growing input: the sum is also the next level's image path
                x = skips[-1] = image = (x + module(image)) / math.sqrt(2)
            else:
                x = module(x, emb) if role == "block" else module(x)
                skips.append(x)
        if return_features:
            return x
        out = h = None
        for name, module in self.dec.items():
            role = self.roles[f"dec.{name}"]
            if role == "aux_up":
                out = module(out)
            elif role == "aux_norm":
                h = module(x)
            elif role == "aux_conv":
                h = module(silu(h))
                out = h if out is None else out + h
            else:
                if module.takes_skip:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out
