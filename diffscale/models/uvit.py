"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models"), written anew for diffscale
from the paper and the published architecture. Pure nn.Module: the DDPM objective owns the schedule and the loss.

Every input is a token: [class (conditional only), time, patches]. The time token is the sinusoidal timestep
embedding (optionally through an MLP), the class token a row of a table with num_classes + 1 rows (the last is the
null class for classifier-free guidance, as U-ViT's conditional models have). A learned position embedding is added,
then `depth` pre-LayerNorm transformer layers: depth // 2 in-blocks, one mid-block, depth // 2 out-blocks, where an
out-block first concatenates the output of its matching in-block (a long skip, last in first out) and projects
2D -> D. The head is LayerNorm -> Linear(D, p^2 C) -> unpatchify -> 3x3 conv (`conv`).

`depth` counts every layer (odd): U-ViT-S/2 is 13 layers, which U-ViT's own config writes as depth=12 (it builds
depth // 2 in- and out-blocks around a mid-block either way).

Parameter names and the timestep embedding ([cos, sin] halves) are U-ViT's, so its checkpoints load as they are.
The forward is explicit pieces that an early-exit sampler (models/deediff.py) drives layer by layer:
`embed` -> `run_layer(i)` for i = 0..depth-1 -> `head`. Those pieces read root parameters (pos_embed, ...) outside
`forward`, so under FSDP2 use them on an unsharded copy (e.g. the EMA); `forward` itself is shard-safe.
"""

import math

import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.models.layers.attention import attention
from diffscale.models.presets import check_positive_ints, merge_preset
from diffscale.registry import MODELS

# Architecture defaults (U-ViT-S/2); a preset or an explicit argument replaces any of them.
DEFAULTS = dict(
    img_resolution=32,  # input height = width (pixels or latent cells)
    img_channels=None,  # input channels C: required without a preset
    patch_size=2,  # patch side p; tokens = (img_resolution / p)^2
    embed_dim=512,  # token width D
    depth=13,  # transformer layers: depth // 2 in-blocks, a mid-block, depth // 2 out-blocks (odd)
    num_heads=8,  # attention heads; D / num_heads per head
    mlp_ratio=4.0,  # MLP hidden width = int(D * mlp_ratio)
    qkv_bias=False,  # bias of the qkv projection (U-ViT: none)
    mlp_time_embed=False,  # time token through Linear(D, 4D), SiLU, Linear(4D, D) (U-ViT's ImageNet models)
    num_classes=0,  # class ids 0..num_classes-1 plus the null class; 0 = unconditional
    conv=True,  # a 3x3 conv after unpatchify (U-ViT's final_layer)
    learn_sigma=False,  # output 2C channels: [eps, variance interpolation v] (improved DDPM); else C
    normalize_timesteps=False,  # embed t / 1000 instead of t (the DeeDiff seed's --normalize_timesteps)
)
PRESETS: dict[str, dict] = {
    # U-ViT-S/2 of CIFAR-10 (U-ViT's configs/cifar10_uvit_small.py): 44,255,328 parameters.
    "uvit_s2_cifar10": dict(img_resolution=32, img_channels=3, patch_size=2, embed_dim=512, depth=13, num_heads=8,
                            mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=0, conv=True,
                            learn_sigma=False),
    # CPU tests: class-conditional with the time MLP, so every optional piece runs.
    "tiny": dict(img_resolution=8, img_channels=3, patch_size=2, embed_dim=32, depth=5, num_heads=2, mlp_ratio=4.0,
                 mlp_time_embed=True, num_classes=10, conv=True, learn_sigma=False),
}


def _err(arg: str, message: str) -> ConfigError:
    return ConfigError(f"UViT: {arg}: {message}")


def resolve_config(preset: str | None, overrides: dict) -> dict:
    """DEFAULTS, then the preset, then every override that is not None (an explicit argument wins); validated."""
    cfg = merge_preset("UViT", DEFAULTS, PRESETS, preset, overrides)
    check_positive_ints("UViT", cfg,
                        ("img_channels", "img_resolution", "patch_size", "embed_dim", "depth", "num_heads"))
    if not isinstance(cfg["num_classes"], int) or cfg["num_classes"] < 0:
        raise _err("num_classes", f"expected an integer >= 0 (0 = unconditional, U-ViT's -1), got "
                                  f"{cfg['num_classes']!r}")
    if not cfg["mlp_ratio"] > 0 or int(cfg["embed_dim"] * cfg["mlp_ratio"]) < 1:
        raise _err("mlp_ratio", f"expected a ratio giving a hidden width >= 1, got {cfg['mlp_ratio']!r}")
    if cfg["img_resolution"] % cfg["patch_size"]:
        raise _err("patch_size", f"{cfg['patch_size']} does not divide img_resolution={cfg['img_resolution']}")
    if cfg["embed_dim"] % cfg["num_heads"]:
        raise _err("num_heads", f"{cfg['num_heads']} heads do not split embed_dim={cfg['embed_dim']}")
    if cfg["depth"] % 2 == 0:
        raise _err("depth", f"expected an odd number of layers (in-blocks, a mid-block, out-blocks), got "
                            f"{cfg['depth']}; U-ViT's depth=12 is depth=13 here")
    return cfg


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] timesteps (any real scale) -> [B, dim] float32: [cos | sin] of t * max_period^(-j / half), j < half.
    U-ViT's layout (halves, cos first), so its checkpoints see the same embedding; an odd dim gets a zero."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(max_period) / half))
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def unpatchify(tokens: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """[B, h * w, p * p * C] (each token p1, p2, C-major as U-ViT lays it out) -> [B, C, h * p, w * p]."""
    b, n, _ = tokens.shape
    h = w = math.isqrt(n)
    x = tokens.reshape(b, h, w, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * patch, w * patch)


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear (heads laid out [q|k|v][head][d], U-ViT's), attention(), proj."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, d / heads]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Linear, GELU, Linear (timm's Mlp names, as U-ViT uses them)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer layer; with `skip`, Linear(2D, D) over [x, skip] first (U-ViT's long skip)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool = False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """p x p patches -> tokens: Conv2d(C, D, kernel = stride = p), flattened row-major."""

    def __init__(self, patch: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def decode(tokens: torch.Tensor, norm: nn.Module, linear: nn.Module, conv: nn.Module, extras: int, patch: int,
           channels: int) -> torch.Tensor:
    """An output head: tokens [B, extras + N, D] -> norm -> linear -> drop the extra tokens -> unpatchify -> conv.
    Shared by UViT's own head and DeeDiff's exit heads."""
    out = linear(norm(tokens))[:, extras:]
    return conv(unpatchify(out, patch, channels))


@MODELS.register_module()
class UViT(nn.Module):
    """F(x[B, C, H, W], t[B] timesteps (float, e.g. 0..999), class_labels[B] int64 or None) -> [B, C or 2C, H, W].

    Labels are class ids 0..num_classes-1; -1 is the null class (classifier-free guidance), None means all null; an
    unconditional network ignores them. With learn_sigma the output is [eps (C), variance interpolation v (C)].
    `preset` picks PRESETS; any argument given explicitly replaces it.
    """

    def __init__(self, preset: str | None = None, *, img_resolution: int | None = None,
                 img_channels: int | None = None, patch_size: int | None = None, embed_dim: int | None = None,
                 depth: int | None = None, num_heads: int | None = None, mlp_ratio: float | None = None,
                 qkv_bias: bool | None = None, mlp_time_embed: bool | None = None, num_classes: int | None = None,
                 conv: bool | None = None, learn_sigma: bool | None = None, normalize_timesteps: bool | None = None):
        super().__init__()
        cfg = resolve_config(preset, dict(
            img_resolution=img_resolution, img_channels=img_channels, patch_size=patch_size, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, mlp_time_embed=mlp_time_embed,
            num_classes=num_classes, conv=conv, learn_sigma=learn_sigma, normalize_timesteps=normalize_timesteps))
        self.config, self.preset = cfg, preset
        self.img_channels, self.img_resolution = cfg["img_channels"], cfg["img_resolution"]
        self.label_dim, self.learn_sigma, self.depth = cfg["num_classes"], cfg["learn_sigma"], cfg["depth"]
        self.embed_dim = D = cfg["embed_dim"]
        self.patch_size = p = cfg["patch_size"]
        self.out_channels = self.img_channels * (2 if self.learn_sigma else 1)
        self.normalize_timesteps = cfg["normalize_timesteps"]
        self.num_patches = (self.img_resolution // p) ** 2
        self.extras = 2 if self.label_dim else 1  # the class and time tokens ahead of the patches

        self.patch_embed = PatchEmbed(p, self.img_channels, D)
        self.time_embed = nn.Sequential(nn.Linear(D, 4 * D), nn.SiLU(), nn.Linear(4 * D, D)) \
            if cfg["mlp_time_embed"] else nn.Identity()
        # Row num_classes is the null class (U-ViT's conditional models are built with num_classes + 1 rows too).
        self.label_emb = nn.Embedding(self.label_dim + 1, D) if self.label_dim else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.num_patches, D))
        block = dict(dim=D, num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"])
        half = self.depth // 2
        self.in_blocks = nn.ModuleList(Block(**block) for _ in range(half))
        self.mid_block = Block(**block)
        self.out_blocks = nn.ModuleList(Block(**block, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, p * p * self.out_channels)
        self.final_layer = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1) if cfg["conv"] \
            else nn.Identity()

        # U-ViT's init: truncated normal (std 0.02, cut at +-2, i.e. effectively untruncated) for the position
        # embedding and every Linear weight, zero Linear biases, LayerNorm at identity; convs and the class table
        # keep PyTorch's defaults.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def blocks(self) -> list[Block]:
        """The transformer layers in forward order: layer i of run_layer is blocks()[i]."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def fsdp_units(self) -> list[nn.Module]:
        """One unit per transformer layer; embeddings and the head stay with the root."""
        return list(self.blocks())

    def embed(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x[B, C, H, W], t[B] (or one value), labels[B] -> tokens [B, extras + N, D]: [class,] time, patches."""
        b = x.shape[0]
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        if self.normalize_timesteps:
            t = t.float() / 1000.0  # the seed's --normalize_timesteps: the embedding sees t in [0, 1)
        patches = self.patch_embed(x)
        tokens = [self.time_embed(timestep_embedding(t, self.embed_dim).to(patches.dtype))[:, None], patches]
        if self.label_emb is not None:
            if class_labels is None:
                class_labels = torch.full((b,), -1, dtype=torch.long, device=x.device)
            if class_labels.ndim != 1 or class_labels.dtype.is_floating_point:
                raise ValueError(f"UViT: class_labels must be integer ids of shape [B], got {class_labels.dtype} "
                                 f"{tuple(class_labels.shape)}")
            # -1 (null) -> row num_classes; no host sync to check the range (the lookup fails on a bad id).
            rows = torch.where(class_labels < 0, self.label_dim, class_labels.long())
            tokens.insert(0, self.label_emb(rows)[:, None].to(patches.dtype))
        return torch.cat(tokens, dim=1) + self.pos_embed.to(patches.dtype)

    def run_layer(self, i: int, tokens: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Layer i (0..depth-1) on tokens [B, L, D]. In-blocks push their output onto `skips`; out-blocks pop the
        matching one (last in, first out). Start every forward with an empty list."""
        half = self.depth // 2
        if not 0 <= i < self.depth:
            raise IndexError(f"UViT: layer {i} out of range 0..{self.depth - 1}")
        if i < half:
            tokens = self.in_blocks[i](tokens)
            skips.append(tokens)
            return tokens
        if i == half:
            return self.mid_block(tokens)
        return self.out_blocks[i - half - 1](tokens, skips.pop())

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last layer -> [B, C or 2C, H, W]."""
        return decode(tokens, self.norm, self.decoder_pred, self.final_layer, self.extras, self.patch_size,
                      self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        tokens, skips = self.embed(x, t, class_labels), []
        for i in range(self.depth):
            tokens = self.run_layer(i, tokens, skips)
        return self.head(tokens)
