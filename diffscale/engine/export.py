"""Consolidate any strategy's checkpoint into full tensors, offline (no process group needed)."""

import tempfile
from pathlib import Path

import torch

from diffscale.engine.checkpoint import load_file


def strategy_of(ckpt: Path) -> str:
    if (ckpt / "model.pt").is_file():
        return "ddp"
    if (ckpt / "dcp").is_dir():
        return "fsdp"
    if (ckpt / "ds").is_dir():
        return "deepspeed"
    raise FileNotFoundError(f"{ckpt}: not a diffscale checkpoint (expected model.pt, dcp/ or ds/ inside)")


def consolidate(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], dict]:
    """(model state_dict, {average name: its parameters}, metadata) of checkpoint directory `ckpt`."""
    ckpt = Path(ckpt)
    kind = strategy_of(ckpt)
    if kind == "ddp":
        state = load_file(ckpt / "model.pt")
        model, mirrors = state["model"], state.get("mirrors", {})
    elif kind == "fsdp":
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(ckpt / "dcp", Path(tmp) / "full.pt")
            state = torch.load(Path(tmp) / "full.pt", weights_only=True)
        model, mirrors = state["model"], state.get("mirrors", {})
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        model = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "ds"), tag="state")
        mirrors = load_file(ckpt / "mirrors.pt")
    trainer = load_file(ckpt / "trainer.pt")
    averages = {key.split("/", 1)[-1]: {n: t.float() for n, t in v.items()} for key, v in mirrors.items()}
    meta = {"strategy": kind, "step": trainer["step"], "nimg": trainer["nimg"]}
    return {k: v.float() if v.is_floating_point() else v for k, v in model.items()}, averages, meta


def flat_weights(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """One flat dict as the export file holds it: 'model.<param>' and 'ema.<average>.<param>'; and metadata."""
    model, averages, meta = consolidate(ckpt)
    flat = {f"model.{k}": v for k, v in model.items()}
    for name, params in averages.items():
        flat.update({f"ema.{name}.{k}": v for k, v in params.items()})
    return flat, dict(meta, averages=sorted(averages))
