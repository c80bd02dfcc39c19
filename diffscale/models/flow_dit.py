"""FlowDiT: a class-conditional latent transformer for rectified flow, written anew for diffscale from DiT (Peebles &
Xie 2023, "Scalable Diffusion Models with Transformers") and the FlowDiT seed's architecture. Pure nn.Module: the
flow objective owns x_t = (1 - t) x0 + t eps (t = 1 is noise) and the loss; this maps (x_t, t, class) to v.

Tokens: Conv2d patchify (kernel = stride = p), optionally a Linear (the seed's `patch_linear`). Positions: fixed
2-D sin-cos added after the conv (`absolute`, DiT), or rotary on q and k in every layer (`rope`: 1-D over the
raster order, the seed; `rope2d`: 2-D axial, LightningDiT). Conditioning c [B, dim] = time + class embedding:
  cond='dit'   t -> sinusoid(256) -> Linear -> SiLU -> Linear; class -> a table of num_classes + 1 rows (the last
               is the null class of classifier-free guidance); blocks modulate from SiLU(c).
  cond='seed'  t -> sinusoid(dim) -> Linear (no bias); class -> one-hot -> Linear(num_classes, c_dim, no bias)
               -> Linear(c_dim, dim); the null class is the all-zero one-hot; blocks modulate from c itself.
Each block: adaLN (LayerNorm without affine, shift / scale / gate for attention and MLP from one Linear(dim,
6 dim)), multi-head attention (optional RMS-normalised q and k, models/layers/attention.py), MLP (SwiGLU or DiT's
GELU). Head: adaLN (shift, scale), Linear(dim, p^2 C_out), unpatchify. `learn_sigma` builds DiT's 2C outputs and
returns the first C (SiT trains flow models on DiT's code this way).

With cond='dit' the parameter names are DiT's, so DiT and SiT state dicts load as they are.
"""

import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.models.layers.attention import attention
from diffscale.models.layers.mlp import GeluMlp, SwiGLU
from diffscale.models.layers.rope import apply_rope, grid_positions, rope_1d, rope_2d
from diffscale.models.presets import check_positive_ints, merge_preset
from diffscale.models.uvit import timestep_embedding, unpatchify
from diffscale.registry import MODELS

# t in [0, 1] is scaled to DiT's 0..1000 timestep range before the sinusoid: its frequencies run from 1 to 1e-4
# per unit, so unscaled t would turn every channel but the first by less than a radian over the whole range.
TIME_SCALE = 1000.0
ROPE_THETA = 10000.0
CHOICES = dict(mlp=("swiglu", "gelu"), pos=("rope", "rope2d", "absolute"), cond=("dit", "seed"))
BOOLS = ("qk_norm", "qkv_bias", "proj_bias", "adaln_zero", "patch_linear", "learn_sigma")

# Architecture defaults (DiT-B/2's shape, velocity output); a preset or an explicit argument replaces any of them.
DEFAULTS = dict(
    img_resolution=32,  # input height = width (latent cells)
    img_channels=None,  # input channels C: required without a preset
    num_classes=1000,  # class ids 0..num_classes-1; -1 is the null class
    patch_size=2,  # patch side p; tokens = (img_resolution / p)^2
    dim=768,  # token width
    depth=12,  # transformer blocks
    num_heads=12,  # attention heads; dim / num_heads per head
    hidden_scale=4.0,  # MLP hidden width = int(dim * hidden_scale) (DiT's mlp_ratio)
    mlp="gelu",  # 'swiglu' | 'gelu' (DiT's, tanh GELU)
    pos="absolute",  # 'absolute' (2-D sin-cos, DiT) | 'rope' (1-D raster) | 'rope2d' (axial)
    cond="dit",  # 'dit' | 'seed' (module docstring)
    c_dim=None,  # cond='seed': width of the class embedding before its projection to dim (None = dim)
    qk_norm=False,  # per-head RMSNorm (learned scale) of q and k (SD3, LightningDiT)
    qkv_bias=True,  # bias of the q, k, v projection (DiT: yes; the seed: no)
    proj_bias=True,  # bias of the attention output projection (DiT: yes; the seed: no)
    adaln_zero=True,  # zero-init every modulation Linear and the output Linear (DiT's adaLN-Zero)
    patch_linear=False,  # a Linear(dim, dim) after the patchify conv (the seed); the conv then has no bias
    learn_sigma=False,  # network outputs 2C channels (DiT's variance head); forward returns the first C
)
_DIT = dict(img_resolution=32, img_channels=4, num_classes=1000, patch_size=2, hidden_scale=4.0, mlp="gelu",
            pos="absolute", cond="dit", c_dim=None, qk_norm=False, qkv_bias=True, proj_bias=True, adaln_zero=True,
            patch_linear=False, learn_sigma=True)
PRESETS: dict[str, dict] = {
    # The FlowDiT seed's ImageNet-256 model (SD-VAE latents 4x32x32): dim scaled with depth as in SD3 (64 per block)
    # and one head per block; 452,050,256 parameters, as the seed's code counts them. Its blocks compute the seed's
    # function except for the norm eps (1e-6 here; the seed: LayerNorm 1e-5, RMSNorm dtype eps), and t is embedded
    # as DiT does (TIME_SCALE) rather than with the seed's unscaled sinusoid.
    "seed_imagenet256": dict(img_resolution=32, img_channels=4, num_classes=1000, patch_size=2, dim=64 * 17,
                             depth=17, num_heads=17, hidden_scale=4.0, mlp="swiglu", pos="rope", cond="seed",
                             c_dim=2048, qk_norm=True, qkv_bias=False, proj_bias=False, adaln_zero=False,
                             patch_linear=True, learn_sigma=False),
    # DiT's own configurations at 256 px (32x32 latents), with its learn_sigma head: 130,315,808 and 674,834,720
    # trainable parameters, as DiT's code counts them.
    "dit_b2": dict(_DIT, dim=768, depth=12, num_heads=12),
    "dit_xl2": dict(_DIT, dim=1152, depth=28, num_heads=16),
    # CPU tests: the seed's pieces at toy size.
    "tiny": dict(img_resolution=8, img_channels=4, num_classes=10, patch_size=2, dim=32, depth=2, num_heads=2,
                 hidden_scale=4.0, mlp="swiglu", pos="rope", cond="seed", c_dim=16, qk_norm=True, qkv_bias=False,
                 proj_bias=False, adaln_zero=False, patch_linear=True, learn_sigma=False),
}


def _err(arg: str, message: str) -> ConfigError:
    return ConfigError(f"FlowDiT: {arg}: {message}")


def resolve_config(preset: str | None, overrides: dict) -> dict:
    """DEFAULTS, then the preset, then every override that is not None (an explicit argument wins); validated."""
    cfg = merge_preset("FlowDiT", DEFAULTS, PRESETS, preset, overrides)
    check_positive_ints("FlowDiT", cfg, ("img_channels", "img_resolution", "num_classes", "patch_size", "dim",
                                         "depth", "num_heads"))
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise _err(key, f"unknown choice {cfg[key]!r}; expected one of {', '.join(choices)}")
    for key in BOOLS:
        if not isinstance(cfg[key], bool):
            raise _err(key, f"expected True or False, got {cfg[key]!r}")
    dim, heads = cfg["dim"], cfg["num_heads"]
    if dim % heads:
        raise _err("num_heads", f"{heads} heads do not split dim={dim}")
    if cfg["img_resolution"] % cfg["patch_size"]:
        raise _err("patch_size", f"{cfg['patch_size']} does not divide img_resolution={cfg['img_resolution']}")
    if not isinstance(cfg["hidden_scale"], (int, float)) or int(dim * cfg["hidden_scale"]) < 1:
        raise _err("hidden_scale", f"expected a ratio giving an MLP width >= 1, got {cfg['hidden_scale']!r}")
    need = {"rope": (dim // heads, 2, "the head width"), "rope2d": (dim // heads, 4, "the head width"),
            "absolute": (dim, 4, "dim")}[cfg["pos"]]  # rotation pairs; 2-D sin-cos takes sin and cos per axis
    if need[0] % need[1]:
        raise _err("pos", f"pos={cfg['pos']!r} needs {need[2]} ({need[0]}) divisible by {need[1]}")
    if cfg["cond"] == "seed":
        cfg["c_dim"] = dim if cfg["c_dim"] is None else cfg["c_dim"]
        check_positive_ints("FlowDiT", cfg, ("c_dim",))
    elif overrides.get("c_dim") not in (None, dim):  # a preset's c_dim is dropped when cond becomes 'dit'
        raise _err("c_dim", f"cond='dit' embeds classes at width dim={dim} (DiT's table); got {cfg['c_dim']!r}")
    else:
        cfg["c_dim"] = None
    return cfg


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """DiT's fixed position embedding of a grid x grid token raster -> [grid^2, dim] float32: the first dim / 2
    channels encode the column, the rest the row, each as [sin | cos] of pos * 10000^(-k / (dim / 4))."""
    omega = 10000.0 ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = grid_positions(grid, grid)

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.double()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear (timm's [q|k|v][head][d] layout), optional q / k RMSNorm, RoPE,
    attention(), output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, proj_bias: bool, qk_norm: bool):
        super().__init__()
        self.num_heads, head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)  # normalise, then rotate (SD3 / LightningDiT order)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(q, k, v)  # [B, heads, N, d / heads]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _modulation(dim: int, chunks: int, silu: bool) -> nn.Sequential:
    # Sequential(act, Linear) keeps DiT's names (adaLN_modulation.1.*); the seed reads c without the SiLU.
    return nn.Sequential(nn.SiLU() if silu else nn.Identity(), nn.Linear(dim, chunks * dim))


class Block(nn.Module):
    """adaLN transformer block: x + gate * attn(modulate(norm(x))), then the same for the MLP."""

    def __init__(self, dim: int, num_heads: int, hidden: int, mlp: str, qkv_bias: bool, proj_bias: bool,
                 qk_norm: bool, silu: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(dim, hidden) if mlp == "swiglu" else GeluMlp(dim, hidden)
        self.adaLN_modulation = _modulation(dim, 6, silu)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then Linear(dim, p^2 C_out), per token."""

    def __init__(self, dim: int, patch: int, out_channels: int, silu: bool):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = _modulation(dim, 2, silu)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    """x [B, C, H, W] -> tokens [B, N, dim]: Conv2d(kernel = stride = p), raster order, + position embedding,
    then the optional Linear (whose bias makes a conv bias redundant, so the conv has none then: the seed's)."""

    def __init__(self, patch: int, in_channels: int, dim: int, linear: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=not linear)
        self.linear = nn.Linear(dim, dim) if linear else nn.Identity()

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        if pos_embed is not None:
            tokens = tokens + pos_embed.to(tokens.dtype)
        return self.linear(tokens)


class TimestepEmbedder(nn.Module):
    """t [B] in [0, 1] -> [B, dim]: sinusoid of t * TIME_SCALE ([cos | sin], DiT's), then `mlp`.
    dit: Linear(256, dim), SiLU, Linear(dim, dim). seed: one Linear(dim, dim) without bias (the class path's
    projection carries the one bias their sum needs)."""

    def __init__(self, dim: int, cond: str):
        super().__init__()
        self.freq_dim = 256 if cond == "dit" else dim
        self.mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim)) if cond == "dit" else \
            nn.Sequential(nn.Linear(dim, dim, bias=False))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_embedding(t.float() * TIME_SCALE, self.freq_dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """labels [B] int (-1 = null) -> [B, dim].
    dit: `embedding_table` of num_classes + 1 rows; row num_classes is the null class.
    seed: one-hot(num_classes) -> Linear(num_classes, c_dim, no bias) -> `proj` Linear(c_dim, dim). A one-hot
    through a bias-free Linear is a row lookup, so the first Linear is `embedding_table` [num_classes, c_dim]; the
    null class is the all-zero one-hot (the seed's), which looks up zeros."""

    def __init__(self, num_classes: int, dim: int, cond: str, c_dim: int | None):
        super().__init__()
        self.num_classes, self.null_row = num_classes, cond == "dit"
        self.embedding_table = nn.Embedding(num_classes + 1, dim) if self.null_row else nn.Embedding(num_classes,
                                                                                                     c_dim)
        self.proj = nn.Identity() if self.null_row else nn.Linear(c_dim, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        null = labels < 0  # no host sync to check the range: the lookup fails on a bad id
        if self.null_row:
            return self.embedding_table(torch.where(null, self.num_classes, labels))
        rows = self.embedding_table(labels.clamp(min=0))
        return self.proj(rows.masked_fill(null[:, None], 0.0))


@MODELS.register_module()
class FlowDiT(nn.Module):
    """F(x[B, C, H, W], t[B] in [0, 1] (t = 1 is noise; one value for the batch works too), class_labels[B] int64
    or None) -> velocity v [B, C, H, W], in the compute dtype.

    Labels are class ids 0..num_classes-1; -1 is the null class (classifier-free guidance), None means all null.
    `preset` picks PRESETS; any argument given explicitly replaces it.
    """

    def __init__(self, preset: str | None = None, *, img_resolution: int | None = None,
                 img_channels: int | None = None, num_classes: int | None = None, patch_size: int | None = None,
                 dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
                 hidden_scale: float | None = None, mlp: str | None = None, pos: str | None = None,
                 cond: str | None = None, c_dim: int | None = None, qk_norm: bool | None = None,
                 qkv_bias: bool | None = None, proj_bias: bool | None = None, adaln_zero: bool | None = None,
                 patch_linear: bool | None = None, learn_sigma: bool | None = None):
        super().__init__()
        cfg = resolve_config(preset, dict(
            img_resolution=img_resolution, img_channels=img_channels, num_classes=num_classes, patch_size=patch_size,
            dim=dim, depth=depth, num_heads=num_heads, hidden_scale=hidden_scale, mlp=mlp, pos=pos, cond=cond,
            c_dim=c_dim, qk_norm=qk_norm, qkv_bias=qkv_bias, proj_bias=proj_bias, adaln_zero=adaln_zero,
            patch_linear=patch_linear, learn_sigma=learn_sigma))
        self.config, self.preset = cfg, preset
        self.img_channels, self.img_resolution = cfg["img_channels"], cfg["img_resolution"]
        self.label_dim, self.learn_sigma, self.depth = cfg["num_classes"], cfg["learn_sigma"], cfg["depth"]
        self.dim, self.num_heads, self.patch_size, self.pos = cfg["dim"], cfg["num_heads"], cfg["patch_size"], \
            cfg["pos"]
        self.out_channels = self.img_channels * (2 if self.learn_sigma else 1)
        self.grid = self.img_resolution // self.patch_size  # tokens per side
        silu = cfg["cond"] == "dit"

        self.x_embedder = PatchEmbed(self.patch_size, self.img_channels, self.dim, cfg["patch_linear"])
        self.t_embedder = TimestepEmbedder(self.dim, cfg["cond"])
        self.y_embedder = LabelEmbedder(self.label_dim, self.dim, cfg["cond"], cfg["c_dim"])
        if self.pos == "absolute":
            # A buffer, not a parameter: fixed, never trained or unfrozen by a freeze pattern, and saved, so DiT's
            # state dicts (where it is a frozen parameter) load. Built on the CPU, so the meta device gets it too.
            pos_embed = sincos_2d(self.dim, self.grid)[None]
            self.register_buffer("pos_embed", pos_embed.to(torch.get_default_device()))
        hidden = int(self.dim * cfg["hidden_scale"])
        self.blocks = nn.ModuleList(
            Block(self.dim, self.num_heads, hidden, cfg["mlp"], cfg["qkv_bias"], cfg["proj_bias"], cfg["qk_norm"],
                  silu) for _ in range(self.depth))
        self.final_layer = FinalLayer(self.dim, self.patch_size, self.out_channels, silu)
        self.initialize_weights(cfg["adaln_zero"])

    def initialize_weights(self, adaln_zero: bool) -> None:
        """DiT's init: xavier-uniform Linears with zero biases, the patch conv as a Linear, N(0, 0.02) for the
        class table and the time MLP; adaLN-Zero zeroes every modulation and the output Linear, so each block
        starts as the identity and the network outputs zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        conv = self.x_embedder.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for m in self.t_embedder.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if adaln_zero:
            for m in [*(b.adaLN_modulation[-1] for b in self.blocks), self.final_layer.adaLN_modulation[-1],
                      self.final_layer.linear]:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def fsdp_units(self) -> list[nn.Module]:
        """One unit per transformer block; embeddings and the head stay with the root."""
        return list(self.blocks)

    def rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) [N, head_dim / 2] for the token grid, or None without RoPE (cheap: built per forward)."""
        head_dim = self.dim // self.num_heads
        if self.pos == "rope":
            return rope_1d(torch.arange(self.grid * self.grid, device=device), head_dim, ROPE_THETA)
        if self.pos == "rope2d":
            return rope_2d(*grid_positions(self.grid, self.grid, device), head_dim, ROPE_THETA)
        return None

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if tuple(x.shape[1:]) != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f"FlowDiT: x must be [B, {self.img_channels}, {self.img_resolution}, "
                             f"{self.img_resolution}], got {tuple(x.shape)}")
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        if class_labels is None:
            class_labels = torch.full((b,), -1, dtype=torch.long, device=x.device)
        if class_labels.ndim != 1 or class_labels.dtype.is_floating_point:
            raise ValueError(f"FlowDiT: class_labels must be integer ids of shape [B], got {class_labels.dtype} "
                             f"{tuple(class_labels.shape)}")
        tokens = self.x_embedder(x, getattr(self, "pos_embed", None))  # [B, N, dim]
        c = self.t_embedder(t) + self.y_embedder(class_labels.long())  # [B, dim]
        rope = self.rope_tables(x.device)
        for block in self.blocks:
            tokens = block(tokens, c, rope)
        out = unpatchify(self.final_layer(tokens, c), self.patch_size, self.out_channels)
        return out[:, :self.img_channels] if self.learn_sigma else out  # drop DiT's variance channels
