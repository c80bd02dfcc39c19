"""Consolidate any strategy's checkpoint into full tensors per part, offline (no process group needed).

Layout of a checkpoint directory (written by the strategies, docs/architecture.md "Checkpoints"):
`trainer.pt` names the strategy and the parts; ddp: `<part>.pt` per part; fsdp: one `dcp/` holding every part;
deepspeed: `ds/<part>/` per trainable part, `<part>.pt` per frozen part, `mirrors.pt` (EMA) for all.

Flat export keys (tools/export_checkpoint.py): `<part>.<param>` and `ema.<part>.<average>.<param>`; a run whose
only part is `model` keeps the one-part names `model.<param>` and `ema.<average>.<param>`. Every `ema.` group is a
whole state dict (the part's buffers beside the averaged parameters). Average names hold dots ('pf_0.050',
'decay_0.9999'), so a reader takes them from the metadata's `averages`, never by splitting keys.
"""

import json
import os
from pathlib import Path

import torch

from diffscale.engine.checkpoint import load_file, require_complete
from diffscale.engine.safe_load import dcp_read_all, weights_only_torch_load
from diffscale.errors import CheckpointError

PartStates = dict[str, dict[str, torch.Tensor]]


def ema_prefix(part: str, parts: list[str]) -> str:
    """The export prefix of `part`'s averages: 'ema.' for a one-part run of part 'model', else 'ema.<part>.'."""
    return "ema." if parts == ["model"] else f"ema.{part}."


def _fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _averages(mirrors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """{'<hook>/<average>': params} -> {average: params} (hook names are unique; average names per part too)."""
    return {key.split("/", 1)[-1]: {n: t.float() for n, t in v.items()} for key, v in mirrors.items()}


def consolidate(ckpt: str | Path) -> tuple[PartStates, dict[str, PartStates], dict]:
    """({part: state_dict}, {part: {average: its parameters}}, metadata) of checkpoint directory `ckpt`."""
    ckpt = Path(ckpt)
    if not (ckpt / "trainer.pt").is_file():
        raise CheckpointError(f"{ckpt}: not a diffscale checkpoint (expected model.pt, dcp/ or ds/ inside) with its "
                              f"trainer.pt")
    require_complete(ckpt)  # every file listed and intact before any is opened
    trainer = load_file(ckpt / "trainer.pt")
    kind, parts = trainer["strategy_name"], trainer["parts"]
    states, mirrors = {}, {}
    if kind == "ddp":
        for name in parts:
            state = load_file(ckpt / f"{name}.pt")
            states[name], mirrors[name] = state["model"], state.get("mirrors", {})
    elif kind == "fsdp":
        full = dcp_read_all(ckpt / "dcp")
        for name in parts:
            states[name], mirrors[name] = full[name]["model"], full[name].get("mirrors", {})
    elif kind == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        all_mirrors = load_file(ckpt / "mirrors.pt")
        for name, info in parts.items():
            if info["trainable"]:
                with weights_only_torch_load():  # zero_to_fp32 calls torch.load(weights_only=False) itself
                    states[name] = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "ds" / name), tag="state")
            else:
                states[name] = load_file(ckpt / f"{name}.pt")["model"]
            mirrors[name] = all_mirrors.get(name, {})
    else:
        raise CheckpointError(f"{ckpt}: unknown strategy '{kind}' in trainer.pt")
    meta = {"strategy": kind, "step": trainer["step"], "nimg": trainer["nimg"], "parts": list(parts)}
    return ({n: _fp32(s) for n, s in states.items()}, {n: _averages(m) for n, m in mirrors.items()}, meta)


def complete_average(state: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of `state`'s model with the averaged `params` in place: an average holds the trainable
    parameters only, so the buffers (and any frozen parameters) come from the raw state, in its key order. They are
    copies: safetensors refuses to write one tensor under several names."""
    return {k: params[k] if k in params else v.clone() for k, v in state.items()} | params


def flat_weights(ckpt: str | Path, part: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """One flat dict as the export file holds it (module docstring), of every part or only `part`; and metadata
    (step, nimg, strategy, parts, averages: the names after 'ema.', e.g. 'pf_0.050' or 'generator.pf_0.050').
    Each average is a complete state dict (its buffers included): `ema.<average>.*` alone loads strictly."""
    states, averages, meta = consolidate(ckpt)
    if part is not None:
        if part not in states:
            raise FileNotFoundError(f"{ckpt}: no part '{part}' (it has {', '.join(states)})")
        states, averages = {part: states[part]}, {part: averages[part]}
    names = list(states)
    flat, average_names = {}, []
    for name, state in states.items():
        flat.update({f"{name}.{k}": v for k, v in state.items()})
        prefix = ema_prefix(name, names)
        for avg, params in averages[name].items():
            flat.update({f"{prefix}{avg}.{k}": v for k, v in complete_average(state, params).items()})
            average_names.append(f"{prefix}{avg}"[len("ema."):])
    return flat, dict(meta, parts=names, averages=sorted(average_names))


def save_export(out: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write an export file: `tensors` (made contiguous) with each metadata value JSON-encoded, through a temporary
    file renamed when complete, so a killed export leaves no half-written file under `out`'s name."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    os.replace(tmp, out)
