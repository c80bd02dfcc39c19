"""DeeDiff (Tang et al. 2023, "DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating Diffusion Model
Generation") on U-ViT, after the early-stopping-diffusion seed (its models/early_exit.py): an output head and an
uncertainty probe at the input of every layer, so a sampler can stop at the first layer whose predicted uncertainty
is below a threshold.

Exit i (0..depth-1) reads the input of layer i (exit 0 the embedded tokens); "exit" depth is the network's own head.
Parameters: the U-ViT backbone keeps UViT's names; every exit head is under `exit_heads.*` and every probe under
`probes.*`, so `trainable=list(HEAD_PATTERNS)` trains the heads and probes on a frozen backbone (the seed's
--freeze_backbone).

Probes (`classifier_type`), each giving an uncertainty in [0, 1] per example:
  attention_probe                   one per layer: a learned query (zero at init) attends with one head over the
                                    patch tokens (keys, values from Linear(D, 2D)); Linear(D, D), SiLU, Linear(D, 1)
  mlp_probe_per_layer               one per layer: Linear(D, 1) + sigmoid per token, averaged over all tokens
  mlp_probe_per_timestep            that probe, one per timestep, shared by the layers
  mlp_probe_per_layer_per_timestep  one per (layer, timestep)
Where we differ from the seed, the line says so.
"""

import fnmatch
import math
from typing import Any

import torch
from torch import nn

from diffscale.errors import ConfigError, closest
from diffscale.models.layers.attention import attention
from diffscale.models.uvit import DEFAULTS, UViT, decode
from diffscale.registry import MODELS

PROBE_TYPES = ("attention_probe", "mlp_probe_per_layer", "mlp_probe_per_timestep", "mlp_probe_per_layer_per_timestep")
# fnmatch patterns of everything DeeDiff adds to the backbone: train only these to keep the backbone frozen.
HEAD_PATTERNS = ("exit_heads.*", "probes.*")


class OutputHead(nn.Module):
    """An exit: LayerNorm -> Linear(D, p^2 C) -> unpatchify -> 3x3 conv, on tokens [B, extras + N, D]."""

    def __init__(self, dim: int, patch: int, channels: int, extras: int, conv: bool = True):
        super().__init__()
        self.patch, self.channels, self.extras = patch, channels, extras
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch * patch * channels)
        self.final_layer = nn.Conv2d(channels, channels, 3, padding=1) if conv else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # The seed drops one token (time); we drop every extra token, so class-conditional models work too.
        return decode(tokens, self.norm, self.decoder_pred, self.final_layer, self.extras, self.patch, self.channels)


class AttentionProbe(nn.Module):
    """tokens [B, extras + N, D] -> uncertainty [B] in (0, 1): one learned query over the patch tokens."""

    def __init__(self, dim: int, extras: int):
        super().__init__()
        self.extras = extras
        self.q = nn.Parameter(torch.zeros(1, 1, 1, dim))  # [1, heads 1, 1 query, D]; zero: uniform weights at init
        self.weight_kv = nn.Linear(dim, 2 * dim)
        self.classification = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.extras:]  # as the seed: the time (and class) tokens are not attended
        b, n, d = patches.shape
        k, v = self.weight_kv(patches).reshape(b, n, 2, 1, d).permute(2, 0, 3, 1, 4)  # each [B, 1, N, D]
        # An expanded query (not a broadcast one): not every attention kernel broadcasts the batch dim.
        q = self.q.to(k.dtype).expand(b, -1, -1, -1).contiguous()
        pooled = attention(q, k, v).reshape(b, d)
        # The seed returns the raw Linear output (unbounded, regressed onto targets in [0, 1]); the sigmoid keeps
        # it in (0, 1), as the MLP probes and the DeeDiff paper's uncertainty estimator are.
        return torch.sigmoid(self.classification(pooled)).reshape(b)


class LinearProbeBank(nn.Module):
    """n probes Linear(D, 1) + sigmoid, averaged over all tokens (the seed's MLPProbe, time token included), as
    one [n, D] weight so that each example picks its own probe by index without a loop."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, dim))
        self.bias = nn.Parameter(torch.empty(n))
        bound = 1.0 / math.sqrt(dim)  # nn.Linear(D, 1)'s default init, which the seed's probes have
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, D], index [B] int64 in [0, n) -> [B]."""
        logits = torch.einsum("bld,bd->bl", tokens, self.weight[index].to(tokens.dtype))
        return torch.sigmoid(logits + self.bias[index].to(tokens.dtype)[:, None]).mean(dim=1)


@MODELS.register_module()
class DeeDiffUViT(UViT):
    """UViT with an output head and an uncertainty probe per layer (see the module docstring).

    forward(x, t, labels) is UViT's (the final output; the heads and probes are not run), so a UViT state_dict
    loads non-strictly and gives the same output; forward(..., return_exits=True) is forward_exits, through
    forward so that DDP and FSDP2 see the call (what DeeDiffLoss trains with). forward_exits runs everything in
    one pass;
    exit_output / uncertainty with UViT's embed / run_layer / head drive a real early exit. `num_timesteps` is the
    number of per-timestep probes T: an example at model time t (0..1000 scale, what DDPMLoss gives the network)
    uses probe round(t * T / 1000). The other arguments are UViT's.
    """

    def __init__(self, preset: str | None = None, *, classifier_type: str = "attention_probe",
                 num_timesteps: int = 1000, **uvit_args: Any):
        unknown = sorted(set(uvit_args) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"DeeDiffUViT: {unknown[0]}: not an argument; expected classifier_type, num_timesteps "
                              f"or one of UViT's (closest: {closest(unknown[0], DEFAULTS)})")
        if classifier_type not in PROBE_TYPES:
            raise ConfigError(f"DeeDiffUViT: classifier_type: unknown '{classifier_type}'; expected one of "
                              f"{', '.join(PROBE_TYPES)} (closest: {closest(classifier_type, PROBE_TYPES)})")
        if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
            raise ConfigError(f"DeeDiffUViT: num_timesteps: expected a positive integer, got {num_timesteps!r}")
        super().__init__(preset, **uvit_args)
        self.classifier_type, self.num_timesteps = classifier_type, num_timesteps
        D, depth = self.embed_dim, self.depth
        # Heads and probes keep PyTorch's default init, as in the seed (UViT's init ran before they exist).
        self.exit_heads = nn.ModuleList(
            OutputHead(D, self.patch_size, self.out_channels, self.extras, self.config["conv"]) for _ in range(depth))
        if classifier_type == "attention_probe":
            self.probes = nn.ModuleList(AttentionProbe(D, self.extras) for _ in range(depth))
        else:
            n = {"mlp_probe_per_layer": depth, "mlp_probe_per_timestep": num_timesteps,
                 "mlp_probe_per_layer_per_timestep": depth * num_timesteps}[classifier_type]
            self.probes = LinearProbeBank(n, D)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                return_exits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if return_exits:
            return self.forward_exits(x, t, class_labels)
        return super().forward(x, t, class_labels)

    def fsdp_units(self) -> list[nn.Module]:
        """The transformer layers, then every exit head and per-layer probe (each called as a module)."""
        probes = list(self.probes) if isinstance(self.probes, nn.ModuleList) else [self.probes]
        return [*self.blocks(), *self.exit_heads, *probes]

    def head_parameter_names(self) -> list[str]:
        """Names of the heads' and probes' parameters (those HEAD_PATTERNS match)."""
        return [n for n, _ in self.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in HEAD_PATTERNS)]

    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """Model time t [B] (0..1000 scale) -> per-timestep probe index [B] int64 in [0, num_timesteps)."""
        k = torch.round(t.float() * (self.num_timesteps / 1000.0)).long()
        return k.clamp(0, self.num_timesteps - 1)

    def exit_output(self, i: int, tokens: torch.Tensor) -> torch.Tensor:
        """Exit i's output [B, C or 2C, H, W] from the input tokens of layer i."""
        return self.exit_heads[i](tokens)

    def uncertainty(self, i: int, tokens: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Exit i's predicted uncertainty [B] in [0, 1] from the input tokens of layer i; t [B] (or one value,
        un-normalised model time) picks the per-timestep probes."""
        if self.classifier_type == "attention_probe":
            return self.probes[i](tokens)
        b = tokens.shape[0]
        if self.classifier_type == "mlp_probe_per_layer":
            return self.probes(tokens, torch.full((b,), i, dtype=torch.long, device=tokens.device))
        if t is None:
            raise ValueError(f"DeeDiffUViT: {self.classifier_type} needs the timesteps t")
        # Each example uses the probe of its own timestep; the seed uses the first example's for the whole batch.
        k = self.timestep_index(t.reshape(-1).expand(b) if t.numel() == 1 else t)
        if self.classifier_type == "mlp_probe_per_timestep":
            return self.probes(tokens, k)
        return self.probes(tokens, i * self.num_timesteps + k)

    def forward_exits(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (final output [B, C', H, W], exit outputs [depth, B, C', H, W], uncertainties [depth, B]) in one pass;
        exit i and its uncertainty read the input of layer i."""
        tokens, skips, exits, uncertainties = self.embed(x, t, class_labels), [], [], []
        for i in range(self.depth):
            exits.append(self.exit_output(i, tokens))
            uncertainties.append(self.uncertainty(i, tokens, t))
            tokens = self.run_layer(i, tokens, skips)
        return self.head(tokens), torch.stack(exits), torch.stack(uncertainties)
