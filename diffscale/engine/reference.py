"""Load a frozen model from one of our checkpoints (the curation reference, the autoguidance guide)."""

from pathlib import Path

import torch
from torch import nn

from diffscale.engine.checkpoint import LAST
from diffscale.errors import ConfigError
from diffscale.registry import MODELS, build


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, a work_dir (its last_checkpoint) or an exported .safetensors file."""
    path = Path(path)
    if (path / LAST).is_file():
        return Path((path / LAST).read_text().strip())
    if path.is_dir() or (path.suffix == ".safetensors" and path.is_file()):
        return path
    raise ConfigError(f"reference checkpoint '{path}': no such checkpoint directory, work_dir with "
                      f"{LAST}, or .safetensors file")


def load_weights(path: Path, ema: str | None) -> dict[str, torch.Tensor]:
    """Model state (parameters replaced by the average `ema` when given) of a checkpoint or export."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        state = {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")}
        prefix = f"ema.{ema}."
        averages = {k[len(prefix):]: v for k, v in flat.items() if ema and k.startswith(prefix)}
        names = sorted({k.split(".")[1] for k in flat if k.startswith("ema.")})
    else:
        from diffscale.engine.export import consolidate

        state, all_averages, _ = consolidate(path)
        averages, names = all_averages.get(ema, {}) if ema else {}, sorted(all_averages)
    if ema and not averages:
        raise ConfigError(f"reference checkpoint '{path}': no average '{ema}' (it has: {names or 'none'})")
    state.update(averages)
    return state


def load_frozen(model_cfg: dict, checkpoint: str | Path, ema: str | None, device: torch.device,
                key: str) -> nn.Module:
    """Build `model_cfg`, load the checkpoint's weights strictly, freeze, eval mode, on `device`."""
    path = resolve_checkpoint(checkpoint)
    model = build(MODELS, model_cfg, f"{key}.model")
    state = load_weights(path, ema)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise ConfigError(f"{key}.checkpoint '{path}' does not match {key}.model: {detail}") from None
    model.requires_grad_(False)
    return model.eval().to(device)
