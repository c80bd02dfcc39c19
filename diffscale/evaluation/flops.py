"""FLOPs of a forward pass, counted by fvcore (`FlopCountAnalysis`, which traces the model with torch.jit).

Units. fvcore counts one fused multiply-add (MAC) as one "flop". Everything here reports FLOPs = 2 x MACs,
the convention of MFU and of hardware peaks (a GPU's dense bf16 TFLOPS count a MAC as two operations).
EDM2's count_flops.py also counts one per multiply-add (plus one per element of elementwise ops), so the
paper's "Gflops" are on fvcore's scale: about half of our figure.

What is counted: convolutions, matmuls / linear layers and the other ops fvcore handles (`fvcore.nn.flop_count`
`_DEFAULT_SUPPORTED_OPS`), plus `aten::scaled_dot_product_attention` (our attention, models/layers/attention.py),
which fvcore does not know. Elementwise and reduction ops (`ELEMENTWISE_OPS`: activations, MP sums, pixel and
weight norms, pooling, ...) are deliberately counted as zero, as fvcore and the papers do: on EDM2 they are
O(activations) next to the convolutions' O(activations x fan-in). Any other op fvcore meets without a handler
is logged once by fvcore ("Unsupported operator ..."): add a handler here if it has real cost.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

# Ops that cost O(elements) and are counted as zero on purpose (see the module docstring).
ELEMENTWISE_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div", "aten::div_",
    "aten::lerp", "aten::silu", "aten::gelu", "aten::sigmoid", "aten::exp", "aten::log", "aten::cos", "aten::sin",
    "aten::sqrt", "aten::rsqrt", "aten::reciprocal", "aten::pow", "aten::clamp", "aten::softmax",
    "aten::linalg_vector_norm", "aten::avg_pool2d", "aten::outer", "aten::ones_like", "aten::zeros_like",
    "aten::one_hot", "aten::dropout", "aten::mean", "aten::sum", "aten::rms_norm", "aten::neg", "aten::where",
    "aten::lt", "aten::embedding", "aten::unflatten",
)


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of softmax(q k^T / sqrt(d)) v, dense (a causal mask's skipped half is counted too).

    q [..., L, E], k [..., S, E], v [..., S, Ev] -> out [..., L, Ev]: q k^T is L*S*E MACs and (attn) v
    L*S*Ev per leading index (batch x heads, broadcast as in the output). The softmax is elementwise.
    """
    q, k, v = (get_shape(t) for t in inputs[:3])
    out = get_shape(outputs[0])
    lead = math.prod(out[:-2])
    length_q, length_kv = q[-2], k[-2]
    return lead * length_q * length_kv * (q[-1] + v[-1])


HANDLERS = {"aten::scaled_dot_product_attention": sdpa_macs}


class _Call(nn.Module):
    """An nn.Module around a callable, so fvcore (which traces modules) can count any forward. A bound method
    of a module is registered with its owner as a submodule, so the owner's weights stay parameters."""

    def __init__(self, fn: Callable[..., Any]):
        super().__init__()
        self.fn = fn
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module):
            self.owner = owner

    def forward(self, *inputs: Any) -> Any:
        return self.fn(*inputs)


def flop_analysis(forward: nn.Module | Callable[..., Any], example_inputs: Sequence[Any]) -> FlopCountAnalysis:
    """fvcore's analysis of `forward(*example_inputs)` with our handlers and the elementwise ops ignored.

    The counts are MACs (fvcore's unit); `.total()` runs the trace. Module-level warnings are off (a wrapped
    callable has no modules worth naming); unsupported-op warnings stay on.
    """
    module = forward if isinstance(forward, nn.Module) else _Call(forward)
    analysis = FlopCountAnalysis(module, tuple(example_inputs))
    analysis.set_op_handle(**HANDLERS)
    analysis.set_op_handle(**dict.fromkeys(ELEMENTWISE_OPS))
    return analysis.uncalled_modules_warnings(False)


def forward_flops(model: nn.Module | Callable[..., Any], example_inputs: Sequence[Any]) -> int:
    """FLOPs (= 2 x fvcore's MACs) of one call `model(*example_inputs)` on the whole batch given.

    A module is traced in eval mode without gradients (so forwards that mutate weights in training, like
    EDM2's forced weight normalisation, leave them alone; dropout costs nothing either way) and every
    submodule's mode is restored afterwards. Data-dependent control flow is counted along the path this batch
    takes (what the jit trace records). Elementwise ops count zero (see ELEMENTWISE_OPS).
    """
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        with torch.no_grad():
            return 2 * int(flop_analysis(model, example_inputs).total())
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.training = mode


def gflops_per_sample(forward: nn.Module | Callable[..., Any], example_inputs: Sequence[Any],
                      batch_size: int | None = None) -> float:
    """GFLOPs per sample of `forward(*example_inputs)`: forward_flops / batch_size / 1e9.

    `batch_size` defaults to the first dim of the first tensor input. An early-exit model counts the layers
    this batch actually ran, so the figure is the batch's average cost per sample. Per-forward costs that do
    not scale with the batch (none are counted for EDM2: its weight normalisation is elementwise) are shared.
    """
    if batch_size is None:
        tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
        if not tensors or tensors[0].ndim == 0:
            raise ValueError("gflops_per_sample: give batch_size (no batched tensor among the inputs)")
        batch_size = tensors[0].shape[0]
    return forward_flops(forward, example_inputs) / batch_size / 1e9


# ------------------------------------------------------------------------------------------------ early exit
# Cost accounting of DeeDiff's early exit (models/deediff.py, sampling/early_exit.py).
#
# Convention. FLOPs = 2 x fvcore's multiply-adds, as everywhere in this file. The DeeDiff seed's "GFLOPs" are
# 2 x ptflops' multiply-adds: 22.75 GFLOPs per U-ViT-S/2 pass. U-ViT's own code counted with fvcore gives 11.34 G
# multiply-adds, i.e. 22.68 GFLOPs, without the attention matmuls (fvcore has no rule for them); flops.py counts
# them (U-ViT-S/2: 12.219 G MACs = 24.437 GFLOPs). `include_attention=False` drops every
# scaled_dot_product_attention (the layers' and the attention probes'), so a table compares with the seed's.

# Lookups and comparisons of the embedding (the class row, the null-class test) and of a probe bank (the row
# gather): no arithmetic, counted as zero without fvcore's "unsupported" notice.
LOOKUP_OPS = ("aten::embedding", "aten::index", "aten::lt", "aten::where")


def _by_operator(module: nn.Module, forward: nn.Module | Callable[..., Any], inputs: Sequence[Any],
                 include_attention: bool) -> int:
    """FLOPs (2 x MACs) of forward(*inputs), `module` (its owner) in eval mode without gradients; attention
    matmuls dropped unless include_attention."""
    modes = [m.training for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            by_op = flop_analysis(forward, inputs).set_op_handle(**dict.fromkeys(LOOKUP_OPS)).by_operator()
    finally:
        for m, mode in zip(module.modules(), modes, strict=True):
            m.training = mode
    if not include_attention:
        by_op.pop("scaled_dot_product_attention", None)
    return 2 * int(sum(by_op.values()))


def deediff_piece_flops(net: nn.Module, include_attention: bool = True) -> dict[str, int | list[int]]:
    """FLOPs per sample of each piece of a DeeDiffUViT, counted by fvcore one piece at a time (batch 1):
    {'embed': int, 'layers': [depth], 'probes': [depth], 'exit_heads': [depth], 'head': int}.

    One layer of each kind (in-block, mid-block, out-block with its long-skip Linear), one probe and one exit head
    are traced and repeated: within a kind every layer, probe and head has the same shapes (a per-timestep probe
    costs the same at any timestep)."""
    param = next(net.parameters())  # trace where (and in the precision) the network lives
    x = torch.zeros(1, net.img_channels, net.img_resolution, net.img_resolution, device=param.device,
                    dtype=param.dtype)
    t = torch.full((1,), 500.0, device=param.device)
    with torch.no_grad():
        tokens = net.embed(x, t)  # [1, L, D]; labels default to the null class (an embedding lookup: no FLOPs)

    def count(fn: nn.Module | Callable[..., Any], *inputs: Any) -> int:
        return _by_operator(net, fn, inputs, include_attention)

    half = net.depth // 2
    kinds = [count(net.in_blocks[0], tokens)] if half else []
    kinds_out = [count(net.out_blocks[0], tokens, tokens)] if half else []
    layers = kinds * half + [count(net.mid_block, tokens)] + kinds_out * half
    if isinstance(net.probes, nn.ModuleList):  # attention probes
        probe = count(net.probes[0], tokens)
    else:  # a LinearProbeBank: one probe picked by index per example
        probe = count(net.probes, tokens, torch.zeros(1, dtype=torch.long, device=param.device))
    return {"embed": count(net.embed, x, t), "layers": layers, "probes": [probe] * net.depth,
            "exit_heads": [count(net.exit_heads[0], tokens)] * net.depth, "head": count(net.head, tokens)}


def exit_gflops_table(net: nn.Module, include_attention: bool = True) -> tuple[list[float], float]:
    """(per-exit GFLOPs per sample [depth + 1], the plain network's GFLOPs per sample) of a DeeDiffUViT.

    Exit i < depth costs the embedding, layers 0..i-1, the probes 0..i it evaluated and exit head i; exit depth
    (no probe was below the threshold) costs the whole network, all depth probes and the network's head. The
    plain network (UViT's forward: no probes or exit heads) is what sampling without early exit costs."""
    p = deediff_piece_flops(net, include_attention)
    table = [p["embed"] + sum(p["layers"][:i]) + sum(p["probes"][:i + 1]) + p["exit_heads"][i]
             for i in range(net.depth)]
    table.append(p["embed"] + sum(p["layers"]) + sum(p["probes"]) + p["head"])
    return [f / 1e9 for f in table], (p["embed"] + sum(p["layers"]) + p["head"]) / 1e9


def exit_cost_summary(exits: torch.Tensor, table_gflops: Sequence[float],
                      full_gflops: float | None = None) -> dict[str, float]:
    """Average cost of a recorded early exit: exits [B, steps] int (exit index per sample and step, e.g. an
    early-exit sampler's last_exits), table_gflops [depth + 1] from exit_gflops_table.

    gflops_per_sample: table[exit] averaged over steps, then over samples (GFLOPs per sample per network call);
    layer_ratio: mean exit index / depth (1 = every layer ran); with full_gflops (the plain network's) also
    flop_ratio = gflops_per_sample / full_gflops and ideal_saving = 1 - flop_ratio."""
    if exits.ndim != 2:
        raise ValueError(f"exit_cost_summary: exits must be [B, steps], got shape {tuple(exits.shape)}")
    table = torch.as_tensor(list(table_gflops), dtype=torch.float64)
    depth = len(table) - 1
    e = exits.detach().to("cpu", torch.long)
    if e.numel() and not (0 <= int(e.min()) and int(e.max()) <= depth):
        raise ValueError(f"exit_cost_summary: exit indices must lie in 0..{depth}, got {int(e.min())}..{int(e.max())}")
    out = {"gflops_per_sample": float(table[e].mean(1).mean(0)),
           "layer_ratio": float(e.double().mean(1).mean(0)) / depth}
    if full_gflops is not None:
        out["flop_ratio"] = out["gflops_per_sample"] / full_gflops
        out["ideal_saving"] = 1.0 - out["flop_ratio"]
    return out
