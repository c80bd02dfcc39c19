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
    "aten::one_hot", "aten::dropout", "aten::mean", "aten::sum",
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
